//! With `--features cuda`: generates the CUDA driver trampolines of `src/cuda_driver.rs` and a
//! link stub for `-lcuda`. See that module for why; nothing happens in a CPU build.

#[cfg(feature = "cuda")]
use std::fmt::Write as _;
#[cfg(feature = "cuda")]
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda_driver_symbols.txt");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    cuda::build();
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    pub fn build() {}
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    pub fn build() {
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
        let names: Vec<String> = std::fs::read_to_string("src/cuda_driver_symbols.txt")
            .expect("src/cuda_driver_symbols.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let mut rs = String::new();
        let _ = writeln!(rs, "pub(crate) const NAMES: [&str; {}] = [", names.len());
        for name in &names {
            let _ = writeln!(rs, "    \"{name}\",");
        }
        rs.push_str("];\n");
        std::fs::write(out.join("cuda_driver.rs"), rs).expect("write OUT_DIR");

        // One object with the slot table and every trampoline, in a static library that this
        // crate links (its own references pull the object, which then defines every name).
        let asm = out.join("cuda_driver.S");
        std::fs::write(&asm, generate(&names, &arch)).expect("write OUT_DIR");
        cc::Build::new().file(&asm).cargo_metadata(false).compile("medvlp_cuda_driver");
        let lib = out.join("libmedvlp_cuda_driver.a");
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static=medvlp_cuda_driver");

        // cudarc (through candle's `dynamic-linking`) asks the linker for `-lcuda`, which only a
        // driver install provides. Here `libcuda.so` is a linker script naming the trampolines'
        // library, so `-lcuda` resolves to them in every binary that links cudarc, also ones that
        // do not link this crate (e.g. a test that uses candle alone); `--as-needed` leaves
        // libcuda out of the binary either way.
        let stub = out.join("link-stub");
        std::fs::create_dir_all(&stub).expect("create link-stub");
        std::fs::write(
            stub.join("libcuda.so"),
            format!(
                "/* medvlp: libcuda.so.1 is opened at run time, see src/cuda_driver.rs */\nINPUT({})\n",
                lib.display()
            ),
        )
        .expect("write link stub");
        println!("cargo:rustc-link-search=native={}", stub.display());
    }
}

/// Assembly of a slot table (one pointer per name, initially `medvlp_cuda_unloaded`) and a
/// hidden function per name that jumps through its slot. A tail jump leaves every argument
/// register and the stack as the caller set them, so no signature is needed.
#[cfg(feature = "cuda")]
fn generate(names: &[String], arch: &str) -> String {
    let mut asm = String::new();
    let n = names.len();
    match arch {
        "x86_64" => {
            asm.push_str(".pushsection .data.medvlp_cuda_slots,\"aw\",@progbits\n.balign 8\n");
            asm.push_str(
                ".globl medvlp_cuda_slots\n.hidden medvlp_cuda_slots\nmedvlp_cuda_slots:\n",
            );
            for _ in 0..n {
                asm.push_str(".quad medvlp_cuda_unloaded\n");
            }
            asm.push_str(".popsection\n.pushsection .text.medvlp_cuda,\"ax\",@progbits\n");
            asm.push_str(".globl medvlp_cuda_unloaded\n.hidden medvlp_cuda_unloaded\n");
            asm.push_str(".type medvlp_cuda_unloaded,@function\nmedvlp_cuda_unloaded:\n");
            asm.push_str("  mov $3, %eax\n  ret\n"); // CUDA_ERROR_NOT_INITIALIZED
            asm.push_str(".globl medvlp_cuda_missing\n.hidden medvlp_cuda_missing\n");
            asm.push_str(".type medvlp_cuda_missing,@function\nmedvlp_cuda_missing:\n");
            asm.push_str("  mov $500, %eax\n  ret\n"); // CUDA_ERROR_NOT_FOUND
            for (i, name) in names.iter().enumerate() {
                let _ = writeln!(
                    asm,
                    ".globl {name}\n.hidden {name}\n.type {name},@function\n.balign 16\n{name}:\n  jmp *(medvlp_cuda_slots+{})(%rip)",
                    8 * i
                );
            }
            asm.push_str(".popsection\n");
        }
        "aarch64" => {
            asm.push_str(".pushsection .data.medvlp_cuda_slots,\"aw\",@progbits\n.balign 8\n");
            asm.push_str(
                ".globl medvlp_cuda_slots\n.hidden medvlp_cuda_slots\nmedvlp_cuda_slots:\n",
            );
            for _ in 0..n {
                asm.push_str(".xword medvlp_cuda_unloaded\n");
            }
            asm.push_str(".popsection\n.pushsection .text.medvlp_cuda,\"ax\",@progbits\n");
            asm.push_str(".globl medvlp_cuda_unloaded\n.hidden medvlp_cuda_unloaded\n");
            asm.push_str(".type medvlp_cuda_unloaded,%function\nmedvlp_cuda_unloaded:\n");
            asm.push_str("  mov w0, #3\n  ret\n");
            asm.push_str(".globl medvlp_cuda_missing\n.hidden medvlp_cuda_missing\n");
            asm.push_str(".type medvlp_cuda_missing,%function\nmedvlp_cuda_missing:\n");
            asm.push_str("  mov w0, #500\n  ret\n");
            for (i, name) in names.iter().enumerate() {
                let off = 8 * i;
                let _ = writeln!(
                    asm,
                    ".globl {name}\n.hidden {name}\n.type {name},%function\n.balign 16\n{name}:\n  adrp x16, medvlp_cuda_slots+{off}\n  ldr x16, [x16, :lo12:medvlp_cuda_slots+{off}]\n  br x16"
                );
            }
            asm.push_str(".popsection\n");
        }
        other => panic!("--features cuda: no driver trampolines for target arch {other}"),
    }
    asm
}
