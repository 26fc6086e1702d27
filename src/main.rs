fn main() -> std::process::ExitCode {
    megaplan::cli::main()
}
