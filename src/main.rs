//! The `loxone-exporter` binary (thin: parse, load, bind, run).

fn main() {
    print!("{}", loxone_exporter::build_info::version_text());
}
