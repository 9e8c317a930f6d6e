fn main() {
    println!("ringpush");
}
