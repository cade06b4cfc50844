//! Reads struct member offsets from the kernel's BTF (/sys/kernel/btf/vmlinux),
//! so kernel programs can read a field of a `task_struct` they were handed
//! without compiling in one kernel's layout (a minimal stand-in for CO-RE,
//! which the Rust BPF toolchain does not offer).
//!
//! The format is `include/uapi/linux/btf.h`: a header, a type section of
//! variable-length records, and a string section.

use std::{fs, path::Path};

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("not BTF data: {0}")]
    Format(&'static str),
    #[error("no struct {0} in BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("no function pointer type {0} in BTF")]
    NoFnPointer(String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC_PROTO: u32 = 13;

/// Parsed BTF: the raw sections and where each type record starts, so a
/// lookup reads only the types it needs (vmlinux BTF has ~100k types).
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Byte offset of type id `i + 1` in `types`.
    index: Vec<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A struct or union: name and members (name offset, type id, bit offset).
struct Composite {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    members: Vec<(u32, u32, u32)>,
}

impl Btf {
    /// The running kernel's BTF (Linux 5.4+ with CONFIG_DEBUG_INFO_BTF).
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path)
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        let bad = BtfError::Format;
        if u16_at(b, 0) != Some(MAGIC) {
            return Err(bad("bad magic (or big-endian)"));
        }
        let hdr = u32_at(b, 4).ok_or(bad("short header"))? as usize;
        let field = |i: usize| u32_at(b, 8 + 4 * i).map(|v| v as usize).ok_or(bad("short header"));
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let section = |off: usize, len: usize| {
            b.get(hdr.checked_add(off)?..hdr.checked_add(off)?.checked_add(len)?)
        };
        let types = section(type_off, type_len).ok_or(bad("type section out of bounds"))?.to_vec();
        let strings =
            section(str_off, str_len).ok_or(bad("string section out of bounds"))?.to_vec();

        let mut index = Vec::new();
        let mut at = 0usize;
        while at < types.len() {
            index.push(at as u32);
            let info = u32_at(&types, at + 4).ok_or(bad("truncated type"))?;
            let vlen = (info & 0xffff) as usize;
            at += 12
                + match (info >> 24) & 0x1f {
                    1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
                    3 => 12,                   // ARRAY
                    4 | 5 => 12 * vlen,        // STRUCT, UNION: members
                    6 | 13 => 8 * vlen,        // ENUM, FUNC_PROTO
                    15 | 19 => 12 * vlen,      // DATASEC, ENUM64
                    2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                    _ => return Err(bad("unknown type kind")),
                };
        }
        if at != types.len() {
            return Err(bad("truncated type section"));
        }
        Ok(Btf { types, strings, index })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// The struct or union at byte offset `at` of the type section.
    fn composite(&self, at: usize) -> Option<Composite> {
        let t = &self.types;
        let info = u32_at(t, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return None;
        }
        let members = (0..(info & 0xffff) as usize)
            .map(|i| {
                let m = at + 12 + 12 * i;
                Some((u32_at(t, m)?, u32_at(t, m + 4)?, u32_at(t, m + 8)?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Composite { name_off: u32_at(t, at)?, kind, kind_flag: info >> 31 == 1, members })
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let ty = self
            .index
            .iter()
            .filter_map(|&at| self.composite(at as usize))
            .find(|c| {
                c.kind == KIND_STRUCT
                    && self.name(c.name_off) == name.as_bytes()
                    && !c.members.is_empty()
            })
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find(&ty, member.as_bytes(), 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    /// (kind, vlen, type id it refers to) of the type record `id`.
    fn kind_of(&self, id: u32) -> Option<(u32, u32, u32)> {
        let at = *self.index.get((id as usize).checked_sub(1)?)? as usize;
        let info = u32_at(&self.types, at + 4)?;
        Some(((info >> 24) & 0x1f, info & 0xffff, u32_at(&self.types, at + 8)?))
    }

    /// How many parameters the function pointer typedef `name` takes. Each
    /// raw tracepoint has one, `btf_trace_<event>`, whose parameters are a
    /// `void *` and then the tracepoint's arguments: so a kernel tells
    /// which arguments its tracepoints pass.
    pub fn fn_pointer_params(&self, name: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::NoFnPointer(name.into());
        let typedef = self.index.iter().enumerate().find(|&(_, &at)| {
            let at = at as usize;
            u32_at(&self.types, at + 4).is_some_and(|info| (info >> 24) & 0x1f == KIND_TYPEDEF)
                && u32_at(&self.types, at).is_some_and(|off| self.name(off) == name.as_bytes())
        });
        let (i, _) = typedef.ok_or_else(missing)?;
        let (_, _, ptr) = self.kind_of(i as u32 + 1).ok_or_else(missing)?;
        match self.kind_of(ptr) {
            Some((KIND_PTR, _, proto)) => match self.kind_of(proto) {
                Some((KIND_FUNC_PROTO, params, _)) => Ok(params),
                _ => Err(missing()),
            },
            _ => Err(missing()),
        }
    }

    fn find(&self, ty: &Composite, member: &[u8], base_bits: u32, depth: u32) -> Option<u32> {
        for &(name_off, type_id, off) in &ty.members {
            // With kind_flag, the high 8 bits hold a bitfield size.
            let off_bits = base_bits + if ty.kind_flag { off & 0xff_ffff } else { off };
            if self.name(name_off) == member {
                return Some(off_bits);
            }
            if name_off == 0 && depth < 8 {
                let at = *self.index.get((type_id as usize).checked_sub(1)?)?;
                if let Some(inner) = self.composite(at as usize)
                    && let Some(found) = self.find(&inner, member, off_bits, depth + 1)
                {
                    return Some(found);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF for: struct s { int a; union { int b; long c; }; int d; }.
    fn sample() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0c\0d\0int\0".to_vec(); // s=1 a=3 b=5 c=7 d=9 int=11
        let mut t = Vec::new();
        let mut push =
            |words: &[u32]| words.iter().for_each(|w| t.extend_from_slice(&w.to_le_bytes()));
        push(&[11, 1 << 24, 4, 32]); // 1: INT "int", size 4, + encoding word
        push(&[0, (5 << 24) | 2, 8]); // 2: anonymous UNION, 2 members
        push(&[5, 1, 0]); //    b: int @0
        push(&[7, 1, 0]); //    c: int @0
        push(&[1, (4 << 24) | 3, 16]); // 3: STRUCT s, 3 members
        push(&[3, 1, 0]); //    a @0
        push(&[0, 2, 64]); //   anonymous union @8 bytes
        push(&[9, 1, 96]); //   d @12 bytes
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("s", "d").unwrap(), 12);
        assert!(matches!(btf.member_offset("s", "zz"), Err(BtfError::NoMember(..))));
        assert!(matches!(btf.member_offset("t", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn counts_a_function_pointer_typedefs_parameters() {
        // 1: INT, 2: FUNC_PROTO(int, int) -> void, 3: PTR -> 2, 4: TYPEDEF "f" -> 3.
        let strings = b"\0int\0f\0".to_vec(); // int=1 f=5
        let mut t = Vec::new();
        let mut push =
            |words: &[u32]| words.iter().for_each(|w| t.extend_from_slice(&w.to_le_bytes()));
        push(&[1, 1 << 24, 4, 32]);
        push(&[0, (13 << 24) | 2, 0, 0, 1, 0, 1]);
        push(&[0, 2 << 24, 2]);
        push(&[5, 8 << 24, 3]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.fn_pointer_params("f").unwrap(), 2);
        assert!(btf.fn_pointer_params("int").is_err());
        assert!(btf.fn_pointer_params("g").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(
            Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_err()
        );
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn running_kernel_has_task_struct_tgid() {
        let btf = match Btf::from_kernel() {
            Ok(btf) => btf,
            Err(err) if std::env::var_os("CI").is_none() => return eprintln!("SKIPPED: {err}"),
            Err(err) => panic!("CI machines have kernel BTF: {err}"),
        };
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4, "pid and tgid are adjacent pid_t fields");
        // void *, preempt, prev, next, prev_state (5.18+).
        assert_eq!(btf.fn_pointer_params("btf_trace_sched_switch").unwrap(), 5);
    }
}
