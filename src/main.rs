fn main() {
    println!("koala");
}
