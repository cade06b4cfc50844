//! TCP probes: classic tracepoints (so tracefs must be mounted), checked
//! against the record layout the programs were built for, and their maps.

use std::{collections::HashMap, fs, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use log::debug;
use probe_common::requests::{ROUTE_COUNT_MAP, ROUTE_NAMES_MAP, RouteName};
use probe_common::tcp::{
    CONTROL_MAP, COUNTER_MAP, COUNTERS, ENDPOINT_MAP, EndpointKey, FIELDS, STATS_MAP, TcpKey,
    TcpValue,
};

use super::{MapFill, ProbeError, max_entries, take};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing if it is not there (classic
/// tracepoints are attached by the id tracefs gives them).
pub fn ensure_tracefs() -> Result<(), String> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    // SAFETY: NUL-terminated static strings and no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    debug!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// A tracepoint record's layout: field name -> (offset, size).
pub type Format = HashMap<String, (u32, u32)>;

/// The layout in a tracepoint's `format` file.
pub fn parse_format(text: &str) -> Format {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut name = None;
        let (mut off, mut size) = (None, None);
        for part in line.split(';').map(str::trim) {
            if let Some(decl) = part.strip_prefix("field:") {
                // "unsigned short common_type", "__u8 saddr[4]", "const void * skaddr"
                let last = decl.rsplit([' ', '*']).next().unwrap_or("");
                name = Some(last.split('[').next().unwrap_or("").to_string());
            } else if let Some(v) = part.strip_prefix("offset:") {
                off = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(n), Some(o), Some(s)) = (name, off, size) {
            out.insert(n, (o, s));
        }
    }
    out
}

/// Checks every field the TCP programs read against the running kernel's
/// tracepoint formats; the reason they cannot run if one differs.
pub fn check_layout() -> Result<(), String> {
    let mut formats: HashMap<(&str, &str), Format> = HashMap::new();
    for f in FIELDS {
        let (sub, event, field, off, size) = (f.subsystem, f.event, f.name, f.offset, f.size);
        if let std::collections::hash_map::Entry::Vacant(slot) = formats.entry((sub, event)) {
            let path = format!("{TRACEFS}/events/{sub}/{event}/format");
            let text = fs::read_to_string(&path)
                .map_err(|e| format!("tracepoint {sub}:{event} unavailable ({path}: {e})"))?;
            slot.insert(parse_format(&text));
        }
        match formats[&(sub, event)].get(field) {
            Some(&(o, s)) if (o, s) == (off, size) => {}
            Some(&(o, s)) => {
                return Err(format!(
                    "tracepoint {sub}:{event} field {field} is at offset {o} size {s} on this kernel, \
                     probe was built for offset {off} size {size}"
                ));
            }
            None => {
                return Err(format!(
                    "tracepoint {sub}:{event} has no field {field} on this kernel"
                ));
            }
        }
    }
    Ok(())
}

/// One read of the TCP maps, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct TcpSnapshot {
    pub stats: HashMap<TcpKey, TcpValue>,
    pub endpoints: HashMap<EndpointKey, TcpValue>,
}

pub struct TcpMaps {
    stats: PerCpuHashMap<MapData, TcpKey, TcpValue>,
    endpoints: PerCpuHashMap<MapData, EndpointKey, TcpValue>,
    counters: PerCpuArray<MapData, u64>,
    control: Array<MapData, u32>,
    /// Entries each endpoint holds (the kernel's bound on its routes).
    route_count: BpfHashMap<MapData, EndpointKey, u32>,
    /// Route id -> its text, as the kernel made it (LRU).
    route_names: BpfHashMap<MapData, u32, RouteName>,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl TcpMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(Self {
            stats: take(ebpf, STATS_MAP)?.try_into().map_err(map_err(STATS_MAP))?,
            endpoints: take(ebpf, ENDPOINT_MAP)?.try_into().map_err(map_err(ENDPOINT_MAP))?,
            counters: take(ebpf, COUNTER_MAP)?.try_into().map_err(map_err(COUNTER_MAP))?,
            control: take(ebpf, CONTROL_MAP)?.try_into().map_err(map_err(CONTROL_MAP))?,
            route_count: take(ebpf, ROUTE_COUNT_MAP)?
                .try_into()
                .map_err(map_err(ROUTE_COUNT_MAP))?,
            route_names: take(ebpf, ROUTE_NAMES_MAP)?
                .try_into()
                .map_err(map_err(ROUTE_NAMES_MAP))?,
        })
    }

    /// Sheds the per-segment connection detail (RTT, bytes) or measures
    /// it again (the overhead budget); requests are always measured.
    pub fn set_detail(&mut self, on: bool) -> Result<(), ProbeError> {
        self.control.set(0, u32::from(!on), 0).map_err(map_err(CONTROL_MAP))
    }

    pub fn read(&self) -> Result<TcpSnapshot, ProbeError> {
        Ok(TcpSnapshot {
            stats: super::read_summed(&self.stats, STATS_MAP)?,
            endpoints: super::read_summed(&self.endpoints, ENDPOINT_MAP)?,
        })
    }

    pub fn counters(&self) -> Result<[u64; COUNTERS as usize], ProbeError> {
        super::read_counters(&self.counters, COUNTER_MAP)
    }

    /// The text of a route id, if the kernel still holds it.
    pub fn route_name(&self, id: u32) -> Option<String> {
        let n = self.route_names.get(&id, 0).ok()?;
        let len = usize::from(n.len).min(n.bytes.len());
        Some(String::from_utf8_lossy(&n.bytes[..len]).into_owned())
    }

    /// Frees the entries of processes that have exited (after their last read).
    pub fn reclaim(&mut self, gone: &std::collections::HashSet<u32>, snap: &TcpSnapshot) -> usize {
        let mut freed = 0;
        let counted: Vec<EndpointKey> = self
            .route_count
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.tgid))
            .collect();
        for key in counted {
            freed += usize::from(self.route_count.remove(&key).is_ok());
        }
        for key in snap.stats.keys().filter(|k| gone.contains(&k.tgid)) {
            freed += usize::from(self.stats.remove(key).is_ok());
        }
        for key in snap.endpoints.keys().filter(|k| gone.contains(&k.tgid)) {
            freed += usize::from(self.endpoints.remove(key).is_ok());
        }
        freed
    }

    pub fn fill(&self, snap: &TcpSnapshot) -> Vec<MapFill> {
        vec![
            MapFill {
                name: STATS_MAP,
                entries: snap.stats.len() as u64,
                max_entries: max_entries(&self.stats),
            },
            MapFill {
                name: ENDPOINT_MAP,
                entries: snap.endpoints.len() as u64,
                max_entries: max_entries(&self.endpoints),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracefs_format() {
        let text = "name: inet_sock_set_state\nID: 1400\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
            \tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\
            \nprint fmt: \"x\"\n";
        let f = parse_format(text);
        assert_eq!(f["common_type"], (0, 2));
        assert_eq!(f["skaddr"], (8, 8));
        assert_eq!(f["sport"], (24, 2));
        assert_eq!(f["daddr_v6"], (56, 16));
    }
}
