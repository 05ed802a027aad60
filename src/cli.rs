pub fn main() -> anyhow::Result<()> {
    Ok(())
}
