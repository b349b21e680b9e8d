fn main() {
    println!("boldstream: skeleton");
}
