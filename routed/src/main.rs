fn main() {
    eprintln!("routed: not implemented yet");
    std::process::exit(1);
}
