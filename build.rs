//! Sets `cfg(linux_full)` when the Linux-only parts are built: on Linux, unless the `portable`
//! feature asks for the path every other platform gets (so that path is tested on Linux too).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(linux_full)");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let portable = std::env::var_os("CARGO_FEATURE_PORTABLE").is_some();
    if linux && !portable {
        println!("cargo::rustc-cfg=linux_full");
    }
}
