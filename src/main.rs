fn main() -> anyhow::Result<()> {
    bindlet::cli::main()
}
