//! The eBPF object the agent ships needs no kernel BTF: it carries no CO-RE
//! relocations (which the loader resolves against /sys/kernel/btf/vmlinux),
//! so kernels built without CONFIG_DEBUG_INFO_BTF (Raspberry Pi OS) load it.
use object::{Object, ObjectSection};

/// The CO-RE relocation bytes of a `.BTF.ext` section: the header's
/// `core_relo_len`, present when the header is at least 32 bytes long.
fn core_relo_len(btf_ext: &[u8]) -> u32 {
    let u32_at = |at: usize| {
        u32::from_le_bytes([
            btf_ext[at],
            btf_ext[at + 1],
            btf_ext[at + 2],
            btf_ext[at + 3],
        ])
    };
    assert_eq!(
        u16::from_le_bytes([btf_ext[0], btf_ext[1]]),
        0xeb9f,
        "BTF.ext magic"
    );
    let hdr_len = u32_at(4);
    if hdr_len < 32 {
        return 0;
    }
    u32_at(28)
}

#[test]
fn the_object_carries_no_core_relocations_so_kernel_btf_is_not_needed() {
    let obj = object::File::parse(proxy_agent::loader::OBJECT).expect("an ELF object");
    let programs: Vec<_> = obj
        .sections()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| n.starts_with("classifier") || n.starts_with("cgroup"))
        .collect();
    // Eight socket hooks, one section each; the TC programs share one.
    assert!(
        programs.len() >= 9,
        "the programs are in the object: {programs:?}"
    );
    if let Some(ext) = obj.section_by_name(".BTF.ext") {
        let data = ext.data().expect("section data");
        assert_eq!(
            core_relo_len(data),
            0,
            "CO-RE relocations would need kernel BTF"
        );
    }
}
