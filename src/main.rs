//! The virt-vmdkimport command: parse the command line, run the library, report errors on one line.

fn main() {
    eprintln!("virt-vmdkimport: nothing here yet");
    std::process::exit(2);
}
