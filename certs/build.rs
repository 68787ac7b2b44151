// See build-support/commit.rs.
include!("../build-support/commit.rs");

fn main() {
    commit();
}
