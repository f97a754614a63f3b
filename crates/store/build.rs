// `sqlx::migrate!` embeds the migrations at compile time, but Cargo does not know it
// read them: without this, a new migration file leaves a built crate stale.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
