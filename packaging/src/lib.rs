//! The `cubenet` Debian package: its metadata is in this crate's
//! `Cargo.toml` (`[package.metadata.deb]`); `packaging/build-deb.sh` builds
//! it. There is no code here.
