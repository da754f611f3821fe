//! The hardware inventory an agent reports to the daemon: who the server is
//! (host name, DMI serials), what it runs (OS, kernel) and what is in it (CPU,
//! RAM, disks, network interfaces and addresses, power supplies).
//!
//! Everything comes from the files Linux exposes under `/proc`, `/sys` and
//! `/etc`. The module only reads, never writes, and runs no external tool, so
//! the agent needs no root for it: only a few DMI serials are root-only on most
//! machines, and an unprivileged agent reports them as absent. Collection never
//! fails as a whole: a file that is missing, unreadable or malformed leaves its
//! field `None` or empty, because a partial inventory is still worth reporting.
//!
//! Every path is taken relative to a root directory, so tests run on captured
//! samples (`tests/fixtures/inventory/`) instead of the machine they run on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most bytes read from an ordinary `/proc`, `/sys` or `/etc` file: each holds
/// one value or a short list, so more than this means something is wrong.
const SMALL_FILE: u64 = 64 * 1024;

/// Most bytes read from `/proc/cpuinfo`, which holds about 1.5 KiB per hardware
/// thread: 4 MiB covers well over a thousand threads.
const CPUINFO_LIMIT: u64 = 4 * 1024 * 1024;

/// Most bytes read from `/proc/net/fib_trie`. The file lists every route, so a
/// host with a large routing table (a Kubernetes node, a BGP speaker) has a
/// long one; it is streamed line by line, so the cap bounds time, not memory.
const FIB_TRIE_LIMIT: u64 = 16 * 1024 * 1024;

/// DMI values that firmware vendors leave in unset fields. They name no real
/// machine, so reporting them would only make unrelated servers look alike.
const DMI_PLACEHOLDERS: &[&str] = &[
    "",
    "To Be Filled By O.E.M.",
    "Default string",
    "Not Specified",
    "System Serial Number",
    "0123456789",
    "None",
    "System Product Name",
    "System manufacturer",
    "Not Applicable",
    "Base Board Serial Number",
    "Type2 - Board Serial Number",
    "Chassis Serial Number",
];

/// Block devices that are not hardware: loop files, RAM disks, compressed swap,
/// device-mapper and software RAID volumes (their member disks are listed
/// themselves) and network block devices.
const VIRTUAL_DISK_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "md", "nbd"];

/// Scope value of a global address in `/proc/net/if_inet6`.
const IPV6_SCOPE_GLOBAL: u8 = 0x00;

/// What one server reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The kernel's host name (`/proc/sys/kernel/hostname`), which may differ
    /// from the name the daemon knows the server by.
    pub hostname: Option<String>,
    /// The distribution's `PRETTY_NAME` from os-release, e.g.
    /// `Debian GNU/Linux 12 (bookworm)`.
    pub os: Option<String>,
    /// The running kernel release (`/proc/sys/kernel/osrelease`), which after
    /// an upgrade without reboot differs from the installed one.
    pub kernel: Option<String>,
    /// Processor model and topology.
    pub cpu: Cpu,
    /// `MemTotal` in bytes: the RAM the kernel manages, a little below the
    /// installed RAM (see [`Inventory::memory_gib_rounded`]).
    pub memory_bytes: Option<u64>,
    /// Chassis and mainboard identity from DMI.
    pub system: SystemBoard,
    /// Physical (or, in a VM, virtual-hardware) disks, sorted by name.
    pub disks: Vec<Disk>,
    /// Network interfaces backed by a device, sorted by name.
    pub interfaces: Vec<Interface>,
    /// Every configured non-loopback unicast address, IPv4 and global IPv6,
    /// including those on virtual interfaces (bridges, bonds, VLANs) that
    /// [`Inventory::interfaces`] leaves out; sorted numerically, IPv4 first,
    /// without duplicates.
    pub ip_addresses: Vec<String>,
    /// Power supplies the kernel knows of, sorted by name. Server PSUs are
    /// usually visible only to the BMC, so this is often empty.
    pub power_supplies: Vec<PowerSupply>,
}

/// Processor model and topology, from `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// The `model name` of the first processor, whitespace collapsed. Absent
    /// on most ARM machines, whose cpuinfo has no model name.
    pub model: Option<String>,
    /// Distinct `physical id` values. `None`, not 1, when cpuinfo has none
    /// (most ARM machines, some VMs): a dual-socket ARM server exists, so
    /// guessing one socket could be wrong.
    pub sockets: Option<u32>,
    /// Physical cores: the `cpu cores` of each socket, summed. `None` when any
    /// socket does not say, since a partial sum would understate the machine.
    pub cores: Option<u32>,
    /// Hardware threads (logical CPUs): the number of `processor` entries.
    pub threads: Option<u32>,
}

/// Identity of the machine from DMI (`/sys/class/dmi/id`). Firmware
/// placeholders such as `To Be Filled By O.E.M.` are reported as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemBoard {
    /// System manufacturer (`sys_vendor`).
    pub vendor: Option<String>,
    /// System model (`product_name`).
    pub product: Option<String>,
    /// System serial number or service tag (`product_serial`); readable by
    /// root only on most machines.
    pub serial: Option<String>,
    /// Mainboard manufacturer (`board_vendor`).
    pub board_vendor: Option<String>,
    /// Mainboard model (`board_name`).
    pub board_name: Option<String>,
    /// Mainboard serial (`board_serial`); readable by root only on most
    /// machines.
    pub board_serial: Option<String>,
    /// Firmware version (`bios_version`), to match against vendor advisories.
    pub bios_version: Option<String>,
}

/// One disk from `/sys/block`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `sda` or `nvme0n1`. Names are not stable across
    /// reboots; the serial is what identifies a disk.
    pub name: String,
    /// Model as the device reports it. For SCSI and SATA disks the kernel
    /// keeps only the first 16 characters, so it may be cut short.
    pub model: Option<String>,
    /// Serial number, to find the disk in the rack and in warranty records.
    pub serial: Option<String>,
    /// Capacity in bytes; 0 if the kernel did not say.
    pub size_bytes: u64,
    /// Whether the kernel treats the disk as spinning. Hypervisors often
    /// report virtual disks as rotational whatever backs them.
    pub rotational: Option<bool>,
}

/// One network interface backed by a device, from `/sys/class/net`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Kernel name, e.g. `eno1`.
    pub name: String,
    /// Current MAC address, lower case. A bonded port reports the bond's.
    pub mac: Option<String>,
    /// Negotiated link speed; unknown while the link is down.
    pub speed_mbps: Option<u32>,
    /// Operational state: `Some(true)` up, `Some(false)` down, `None` for any
    /// other state the kernel reports (`unknown`, `dormant`, …).
    pub up: Option<bool>,
    /// Global IPv6 addresses configured on this interface. IPv4 addresses are
    /// not listed here: `/proc` names no interface for them (only netlink
    /// does, and this module reads files only); they are all in
    /// [`Inventory::ip_addresses`]. An address configured on a bond or VLAN on
    /// top of this interface is listed there too, not here.
    pub addresses: Vec<String>,
}

/// One power supply from `/sys/class/power_supply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerSupply {
    /// Kernel name, e.g. `PSU1`, `AC` or `BAT0`.
    pub name: String,
    /// Manufacturer, when the driver knows it.
    pub manufacturer: Option<String>,
    /// Model (`model_name`), when the driver knows it.
    pub model: Option<String>,
    /// The kernel's `type`: `Mains`, `Battery`, `UPS`, `USB`, …
    pub kind: Option<String>,
    /// Whether the supply is delivering power, so a failed redundant PSU
    /// shows up.
    pub online: Option<bool>,
}

/// Collects the inventory of the machine whose filesystem is mounted at `root`
/// (`/` in production). Never fails: whatever cannot be read is left out.
pub fn collect(root: &Path) -> Inventory {
    // Read once for both lists, so they cannot disagree.
    let ipv6 = global_ipv6_by_interface(root);
    Inventory {
        hostname: read_value(&root.join("proc/sys/kernel/hostname")),
        os: os_name(root),
        kernel: read_value(&root.join("proc/sys/kernel/osrelease")),
        cpu: cpu(root),
        memory_bytes: mem_total(root),
        system: system_board(root),
        disks: disks(root),
        interfaces: interfaces(root, &ipv6),
        ip_addresses: ip_addresses(root, &ipv6),
        power_supplies: power_supplies(root),
    }
}

/// Collects the inventory of the machine the agent runs on.
pub fn collect_local() -> Inventory {
    collect(Path::new("/"))
}

impl Inventory {
    /// RAM in whole GiB, for display: `MemTotal` rounded to the nearest GiB,
    /// at least 1.
    ///
    /// `MemTotal` leaves out what the kernel reserves at boot (its own image,
    /// the page tables of all memory — about 1.6 % —, a crash kernel), so it
    /// is not the installed RAM and rounding does not always recover it: a
    /// server with 64 GiB installed typically shows 62.6–62.8 GiB and reads
    /// as 63 here. The exact installed size is only in the SMBIOS memory
    /// device tables, which need root.
    pub fn memory_gib_rounded(&self) -> Option<u64> {
        const GIB: u64 = 1 << 30;
        let bytes = self.memory_bytes?;
        Some((bytes.saturating_add(GIB / 2) / GIB).max(1))
    }

    /// The installed RAM in GiB, estimated from `MemTotal`: what the kernel reserves at
    /// boot (1.5–6 %) is added back by rounding up to the sizes memory is sold in — a
    /// power of two when `MemTotal` is within 6 % below one (62.7 GiB → 64), else the
    /// next multiple of 1, 2, 8 or 32 GiB by size (23.5 → 24, 94.3 → 96, 188.6 → 192).
    /// This is what a handover form declares, so the register comparison uses it; a
    /// virtual machine of an unusual size may read a little high.
    pub fn memory_gib_installed(&self) -> Option<u64> {
        let gib = self.memory_bytes? as f64 / (1u64 << 30) as f64;
        if gib <= 0.0 {
            return Some(1);
        }
        let power = gib.log2().ceil().exp2();
        if power <= gib * 1.06 {
            return Some(power as u64);
        }
        let step = match gib {
            g if g < 8.0 => 1.0,
            g if g < 32.0 => 2.0,
            g if g < 512.0 => 8.0,
            _ => 32.0,
        };
        Some(((gib / step).ceil() * step) as u64)
    }

    /// The inventory as (label, value) pairs for a two-column display on the
    /// command line. Lists (disks, interfaces, addresses, PSUs) take one pair
    /// per item; the pairs after the first carry an empty label so the column
    /// reads as one block. Absent values show as `unknown`, so an operator can
    /// tell "not found" from "not shown".
    pub fn summary_lines(&self) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        let mut one = |label: &str, value: Option<String>| {
            lines.push((
                label.to_owned(),
                value.unwrap_or_else(|| UNKNOWN.to_owned()),
            ));
        };
        one("Hostname", self.hostname.clone());
        one("OS", self.os.clone());
        one("Kernel", self.kernel.clone());
        one("CPU", cpu_summary(&self.cpu));
        one(
            "RAM",
            self.memory_gib_installed().map(|g| {
                format!(
                    "{g} GiB installed ({} GiB usable)",
                    self.memory_gib_rounded().unwrap_or(0)
                )
            }),
        );
        one(
            "System",
            join_known(&[&self.system.vendor, &self.system.product]),
        );
        one("Serial", self.system.serial.clone());
        let board = match (
            join_known(&[&self.system.board_vendor, &self.system.board_name]),
            &self.system.board_serial,
        ) {
            (Some(board), Some(serial)) => Some(format!("{board}, S/N {serial}")),
            (None, Some(serial)) => Some(format!("S/N {serial}")),
            (board, None) => board,
        };
        one("Board", board);
        one("BIOS", self.system.bios_version.clone());

        list(&mut lines, "Disks", self.disks.iter().map(disk_summary));
        list(
            &mut lines,
            "Interfaces",
            self.interfaces.iter().map(interface_summary),
        );
        list(
            &mut lines,
            "IP addresses",
            self.ip_addresses.iter().cloned(),
        );
        list(
            &mut lines,
            "PSU",
            self.power_supplies.iter().map(psu_summary),
        );
        lines
    }
}

/// Shown for a value the inventory does not have.
const UNKNOWN: &str = "unknown";

/// Appends one pair per item, or a single `none` when there are no items.
fn list(lines: &mut Vec<(String, String)>, label: &str, items: impl Iterator<Item = String>) {
    let start = lines.len();
    for item in items {
        let label = if lines.len() == start { label } else { "" };
        lines.push((label.to_owned(), item));
    }
    if lines.len() == start {
        lines.push((label.to_owned(), "none".to_owned()));
    }
}

/// The known parts joined by a space, or `None` if none is known.
fn join_known(parts: &[&Option<String>]) -> Option<String> {
    let known: Vec<&str> = parts.iter().filter_map(|p| p.as_deref()).collect();
    (!known.is_empty()).then(|| known.join(" "))
}

/// E.g. `2 × Intel Xeon Silver 4214 (24 cores, 48 threads)`; the socket count
/// is shown only when there are several.
fn cpu_summary(cpu: &Cpu) -> Option<String> {
    let mut counts = Vec::new();
    if let Some(cores) = cpu.cores {
        counts.push(plural(cores, "core"));
    }
    if let Some(threads) = cpu.threads {
        counts.push(plural(threads, "thread"));
    }
    let model = cpu.model.as_deref().map(short_cpu_model);
    if model.is_none() && counts.is_empty() {
        return None;
    }
    let mut text = String::new();
    if let Some(sockets) = cpu.sockets.filter(|&s| s > 1) {
        text.push_str(&format!("{sockets} × "));
    }
    text.push_str(model.as_deref().unwrap_or("unknown model"));
    if !counts.is_empty() {
        text.push_str(&format!(" ({})", counts.join(", ")));
    }
    Some(text)
}

/// `1 core`, `4 cores`.
fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The marketing noise taken out of a CPU model for display:
/// `Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz` → `Intel Xeon Silver 4214`.
/// The nominal clock goes too: it is in the model number already.
fn short_cpu_model(model: &str) -> String {
    let mut text = model.to_owned();
    for mark in ["(R)", "(r)", "(TM)", "(tm)"] {
        text = text.replace(mark, "");
    }
    if let Some(at) = text.find(" @ ") {
        text.truncate(at);
    }
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if words.len() > 1 && matches!(words.last(), Some(&"CPU") | Some(&"Processor")) {
        words.pop();
    }
    words.join(" ")
}

/// E.g. `sda Samsung SSD 870 500.1 GB, S/N S6PWNF0T123456A`.
fn disk_summary(disk: &Disk) -> String {
    let mut text = disk.name.clone();
    if let Some(model) = &disk.model {
        text.push(' ');
        text.push_str(model);
    }
    text.push(' ');
    text.push_str(&decimal_size(disk.size_bytes));
    if let Some(serial) = &disk.serial {
        text.push_str(&format!(", S/N {serial}"));
    }
    text
}

/// A size in decimal units, as disks are sold: `500.1 GB`, `4 TB`. One decimal,
/// dropped when it is zero.
fn decimal_size(bytes: u64) -> String {
    for (unit, suffix) in [
        (1_000_000_000_000_000_u128, "PB"),
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "kB"),
    ] {
        // Rounded before the unit is chosen, so 999.96 GB reads as 1 TB.
        let tenths = (u128::from(bytes) * 10 + unit / 2) / unit;
        if tenths >= 10 {
            return if tenths % 10 == 0 {
                format!("{} {suffix}", tenths / 10)
            } else {
                format!("{}.{} {suffix}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes} B")
}

/// E.g. `eno1 b0:26:28:aa:bb:cc, 1 Gb/s, up, 2001:db8:1e::40`.
fn interface_summary(iface: &Interface) -> String {
    let mut parts = vec![match &iface.mac {
        Some(mac) => format!("{} {mac}", iface.name),
        None => iface.name.clone(),
    }];
    if let Some(speed) = iface.speed_mbps {
        parts.push(link_speed(speed));
    }
    match iface.up {
        Some(true) => parts.push("up".to_owned()),
        Some(false) => parts.push("down".to_owned()),
        None => {}
    }
    parts.extend(iface.addresses.iter().cloned());
    parts.join(", ")
}

/// `100 Mb/s`, `1 Gb/s`, `2.5 Gb/s`, `25 Gb/s`.
fn link_speed(mbps: u32) -> String {
    if mbps < 1000 {
        format!("{mbps} Mb/s")
    } else if mbps.is_multiple_of(1000) {
        format!("{} Gb/s", mbps / 1000)
    } else {
        format!("{} Gb/s", f64::from(mbps) / 1000.0)
    }
}

/// E.g. `PSU1 DELL 0TN1RNA02, Mains, online`.
fn psu_summary(psu: &PowerSupply) -> String {
    let mut first = psu.name.clone();
    for part in [&psu.manufacturer, &psu.model].into_iter().flatten() {
        first.push(' ');
        first.push_str(part);
    }
    let mut parts = vec![first];
    if let Some(kind) = &psu.kind {
        parts.push(kind.clone());
    }
    match psu.online {
        Some(true) => parts.push("online".to_owned()),
        Some(false) => parts.push("offline".to_owned()),
        None => {}
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------

/// Opens a regular file for reading, or `None`. Opened non-blocking and
/// checked to be a regular file, so a FIFO or device node in an odd root can
/// neither hang nor flood the agent; `/proc` and `/sys` files are regular.
fn open_regular(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// At most `limit` bytes of a file.
fn read_bytes(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(limit)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// The value a small file holds, without surrounding whitespace and NULs
/// (sysfs ends values with a newline, some firmware strings with NULs or
/// space padding); `None` when missing, unreadable or blank.
fn read_value(path: &Path) -> Option<String> {
    let bytes = read_bytes(path, SMALL_FILE)?;
    clean(&String::from_utf8_lossy(&bytes))
}

/// `text` without surrounding whitespace and NULs, or `None` if nothing is
/// left.
fn clean(text: &str) -> Option<String> {
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_owned())
}

/// The lines of a file, read lazily up to `limit` bytes; invalid UTF-8 is
/// replaced rather than ending the file early.
fn read_lines(path: &Path, limit: u64) -> Option<impl Iterator<Item = String> + use<>> {
    let reader = BufReader::new(open_regular(path)?.take(limit));
    Some(
        reader
            .split(b'\n')
            .map_while(Result::ok)
            .map(|line| String::from_utf8_lossy(&line).into_owned()),
    )
}

/// The names in a directory, sorted; empty when it cannot be listed.
fn dir_names(path: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(path) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// `"1"` → true, `"0"` → false, anything else → unknown.
fn read_flag(path: &Path) -> Option<bool> {
    match read_value(path)?.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Collectors
// ---------------------------------------------------------------------------

/// `PRETTY_NAME` from os-release, falling back to `NAME` when a minimal
/// image leaves it out. `/usr/lib/os-release` is the fallback os-release(5)
/// gives for a missing `/etc/os-release`; it is also read when the latter
/// names nothing.
fn os_name(root: &Path) -> Option<String> {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|rel| {
            let text =
                String::from_utf8_lossy(&read_bytes(&root.join(rel), SMALL_FILE)?).into_owned();
            os_release_field(&text, "PRETTY_NAME").or_else(|| os_release_field(&text, "NAME"))
        })
}

/// The value of `key` in os-release text: shell-style `KEY=value`, the value
/// optionally in single or double quotes, with backslash escapes inside
/// double quotes.
fn os_release_field(text: &str, key: &str) -> Option<String> {
    let raw = text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        (k.trim() == key).then_some(v.trim())
    })?;
    let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out
    } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.to_owned()
    } else {
        raw.to_owned()
    };
    clean(&value)
}

/// Model and topology from `/proc/cpuinfo`.
fn cpu(root: &Path) -> Cpu {
    match read_lines(&root.join("proc/cpuinfo"), CPUINFO_LIMIT) {
        Some(lines) => parse_cpuinfo(lines),
        None => Cpu::default(),
    }
}

/// Parses cpuinfo: one block of `key : value` lines per logical CPU, each
/// starting with `processor`. Within a block the order of keys is not relied
/// on, so a block's `physical id` and `cpu cores` are paired when it ends.
fn parse_cpuinfo(lines: impl Iterator<Item = String>) -> Cpu {
    /// What one processor block says about its socket.
    #[derive(Default)]
    struct Block {
        physical_id: Option<String>,
        cpu_cores: Option<u32>,
    }

    let mut model = None;
    let mut threads: u32 = 0;
    // physical id → that socket's `cpu cores`, from the first block that
    // states it.
    let mut sockets: BTreeMap<String, Option<u32>> = BTreeMap::new();
    let mut block = Block::default();
    let mut end_block = |block: Block| {
        if let Some(id) = block.physical_id {
            let cores = sockets.entry(id).or_insert(None);
            if cores.is_none() {
                *cores = block.cpu_cores;
            }
        }
    };
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => {
                end_block(std::mem::take(&mut block));
                threads = threads.saturating_add(1);
            }
            "model name" if model.is_none() => {
                model = clean(&value.split_whitespace().collect::<Vec<_>>().join(" "));
            }
            "physical id" => block.physical_id = Some(value.to_owned()),
            "cpu cores" => block.cpu_cores = value.parse().ok(),
            _ => {}
        }
    }
    end_block(block);

    let (sockets, cores) = if sockets.is_empty() {
        (None, None)
    } else {
        let cores = sockets
            .values()
            .try_fold(0_u32, |sum, cores| sum.checked_add((*cores)?));
        (u32::try_from(sockets.len()).ok(), cores)
    };
    Cpu {
        model,
        sockets,
        cores,
        threads: (threads > 0).then_some(threads),
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total(root: &Path) -> Option<u64> {
    let bytes = read_bytes(&root.join("proc/meminfo"), SMALL_FILE)?;
    let text = String::from_utf8_lossy(&bytes);
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut words = rest.split_whitespace();
    let amount: u64 = words.next()?.parse().ok()?;
    // The kernel always writes kB (meaning KiB); a bare number would be bytes.
    match words.next() {
        Some("kB") => amount.checked_mul(1024),
        None => Some(amount),
        Some(_) => None,
    }
}

/// Identity from `/sys/class/dmi/id`.
fn system_board(root: &Path) -> SystemBoard {
    let dmi = root.join("sys/class/dmi/id");
    let field = |name: &str| read_value(&dmi.join(name)).filter(|v| !is_dmi_placeholder(v));
    SystemBoard {
        vendor: field("sys_vendor"),
        product: field("product_name"),
        serial: field("product_serial"),
        board_vendor: field("board_vendor"),
        board_name: field("board_name"),
        board_serial: field("board_serial"),
        bios_version: field("bios_version"),
    }
}

/// Whether a DMI value is a firmware placeholder rather than data: one of the
/// known fillers, or one character repeated (`0000000000`, `XXXXXXXX`), as
/// white-box boards leave unset serials.
fn is_dmi_placeholder(value: &str) -> bool {
    let value = value.trim();
    if DMI_PLACEHOLDERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(value))
    {
        return true;
    }
    let mut chars = value.chars();
    match chars.next() {
        Some(first) => value.chars().count() > 1 && chars.all(|c| c == first),
        None => true,
    }
}

/// Disks from `/sys/block`, sorted by name.
fn disks(root: &Path) -> Vec<Disk> {
    let block = root.join("sys/block");
    dir_names(&block)
        .into_iter()
        .filter(|name| !VIRTUAL_DISK_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter_map(|name| {
            let dir = block.join(&name);
            // `size` counts 512-byte sectors whatever the disk's block size.
            let size_bytes = read_value(&dir.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(0, |sectors| sectors.saturating_mul(512));
            // An optical drive without a disc is not storage to report.
            if name.starts_with("sr") && size_bytes == 0 {
                return None;
            }
            let device = dir.join("device");
            Some(Disk {
                model: read_value(&device.join("model")),
                serial: disk_serial(&dir),
                size_bytes,
                rotational: read_flag(&dir.join("queue/rotational")),
                name,
            })
        })
        .collect()
}

/// A disk's serial. NVMe controllers (and some SCSI drivers) have
/// `device/serial`; virtio disks have `serial` on the disk itself; SCSI and
/// SATA disks have only the raw VPD page 0x80 (`device/vpd_pg80`), which,
/// unlike asking the disk through an ioctl, needs no root.
fn disk_serial(dir: &Path) -> Option<String> {
    read_value(&dir.join("device/serial"))
        .or_else(|| read_value(&dir.join("serial")))
        .or_else(|| vpd_unit_serial(&read_bytes(&dir.join("device/vpd_pg80"), SMALL_FILE)?))
}

/// The serial in a SCSI "Unit Serial Number" VPD page: a 4-byte header
/// (qualifier, page code 0x80, 16-bit length) followed by ASCII, often
/// space-padded.
fn vpd_unit_serial(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, rest @ ..] = page else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let serial = rest.get(..len.min(rest.len()))?;
    if !serial
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == 0)
    {
        return None;
    }
    clean(&String::from_utf8_lossy(serial))
}

/// Interfaces from `/sys/class/net` that are backed by a device, sorted by
/// name.
fn interfaces(root: &Path, ipv6: &BTreeMap<String, BTreeSet<Ipv6Addr>>) -> Vec<Interface> {
    let net = root.join("sys/class/net");
    dir_names(&net)
        .into_iter()
        .filter(|name| name != "lo" && !is_virtual_interface(&net.join(name)))
        .map(|name| {
            let dir = net.join(&name);
            let mac = read_value(&dir.join("address"))
                .map(|m| m.to_ascii_lowercase())
                .filter(|m| m != "00:00:00:00:00:00");
            // -1 (or an error, with some drivers) while the link is down.
            let speed_mbps = read_value(&dir.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| u32::try_from(s).ok());
            let up = match read_value(&dir.join("operstate")).as_deref() {
                Some("up") => Some(true),
                Some("down") => Some(false),
                _ => None,
            };
            let addresses = ipv6
                .get(&name)
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            Interface {
                name,
                mac,
                speed_mbps,
                up,
                addresses,
            }
        })
        .collect()
}

/// Whether an interface is a software one (bridge, bond, VLAN, tunnel, veth):
/// its sysfs entry links into `/devices/virtual/`, and it has no `device`
/// link to the hardware behind it. The second test alone decides for captured
/// samples, where the entries are plain directories.
fn is_virtual_interface(dir: &Path) -> bool {
    let links_to_virtual = fs::read_link(dir)
        .is_ok_and(|target| target.to_string_lossy().contains("devices/virtual/"));
    links_to_virtual || fs::symlink_metadata(dir.join("device")).is_err()
}

/// Global-scope IPv6 addresses from `/proc/net/if_inet6`, by interface name.
/// Link-local addresses are left out: every interface has one, derived from
/// the MAC, so they say nothing and reach nothing beyond the segment.
fn global_ipv6_by_interface(root: &Path) -> BTreeMap<String, BTreeSet<Ipv6Addr>> {
    let mut by_name: BTreeMap<String, BTreeSet<Ipv6Addr>> = BTreeMap::new();
    let Some(lines) = read_lines(&root.join("proc/net/if_inet6"), SMALL_FILE) else {
        return by_name;
    };
    for line in lines {
        // address, ifindex, prefix length, scope, flags, name; all hex.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [address, _, _, scope, _, name] = fields[..] else {
            continue;
        };
        if address.len() != 32 {
            continue;
        }
        let (Ok(address), Ok(scope)) = (
            u128::from_str_radix(address, 16),
            u8::from_str_radix(scope, 16),
        ) else {
            continue;
        };
        let address = Ipv6Addr::from(address);
        if scope == IPV6_SCOPE_GLOBAL && is_reportable_ipv6(&address) {
            by_name.entry(name.to_owned()).or_default().insert(address);
        }
    }
    by_name
}

/// Whether an IPv6 address is a unicast address of this host worth reporting.
fn is_reportable_ipv6(address: &Ipv6Addr) -> bool {
    !(address.is_loopback() || address.is_unspecified() || address.is_multicast())
}

/// Every configured non-loopback unicast address: IPv4 from the kernel's
/// routing trie, global IPv6 from `/proc/net/if_inet6`; numerically sorted.
fn ip_addresses(root: &Path, ipv6: &BTreeMap<String, BTreeSet<Ipv6Addr>>) -> Vec<String> {
    let mut all: BTreeSet<IpAddr> = local_ipv4(root).into_iter().map(IpAddr::V4).collect();
    all.extend(ipv6.values().flatten().copied().map(IpAddr::V6));
    all.iter().map(ToString::to_string).collect()
}

/// The host's own IPv4 addresses, from `/proc/net/fib_trie`.
///
/// `/proc` has no list of IPv4 addresses (that is netlink's job, and this
/// module reads files only), but each one is a `/32 host LOCAL` route in the
/// routing trie, listed under the leaf `|-- a.b.c.d` that names it:
///
/// ```text
///            |-- 10.20.30.40
///               /32 host LOCAL
///         |-- 10.20.30.255
///            /32 link BROADCAST
/// ```
///
/// A leaf may carry several routes (`/32 link BROADCAST` and `/8 host LOCAL`
/// on a network address), so only the exact `/32 host LOCAL` line counts.
/// Each address shows in more than one table; the set keeps it once.
fn local_ipv4(root: &Path) -> BTreeSet<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let Some(lines) = read_lines(&root.join("proc/net/fib_trie"), FIB_TRIE_LIMIT) else {
        return found;
    };
    let mut leaf: Option<Ipv4Addr> = None;
    for line in lines {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|--") {
            leaf = address.trim().parse().ok();
        } else if line.starts_with('/') {
            let route: Vec<&str> = line.split_whitespace().collect();
            if route == ["/32", "host", "LOCAL"]
                && let Some(address) = leaf.filter(|a| !a.is_loopback())
            {
                found.insert(address);
            }
        } else {
            // A new subtree (`+-- …`) or table header (`Local:`): the routes
            // that follow belong to no leaf seen so far.
            leaf = None;
        }
    }
    found
}

/// Power supplies from `/sys/class/power_supply`, sorted by name.
fn power_supplies(root: &Path) -> Vec<PowerSupply> {
    let base = root.join("sys/class/power_supply");
    dir_names(&base)
        .into_iter()
        .map(|name| {
            let dir = base.join(&name);
            PowerSupply {
                manufacturer: read_value(&dir.join("manufacturer")),
                model: read_value(&dir.join("model_name")),
                kind: read_value(&dir.join("type")),
                online: read_flag(&dir.join("online")),
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inventory")
            .join(name)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn dell_r740_identity_os_cpu_and_memory() {
        let inv = collect(&fixture("dell-r740"));
        assert_eq!(inv.hostname, some("bkp-r740-07"));
        assert_eq!(inv.os, some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(inv.kernel, some("6.1.0-18-amd64"));
        assert_eq!(
            inv.cpu,
            Cpu {
                model: some("Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz"),
                sockets: Some(2),
                cores: Some(4),
                threads: Some(4),
            }
        );
        assert_eq!(inv.memory_bytes, Some(65_693_092 * 1024));
        // 62.65 GiB: nearest whole GiB is 63 although 64 GiB are installed
        // (see `memory_gib_rounded`).
        assert_eq!(inv.memory_gib_rounded(), Some(63));
        assert_eq!(
            inv.system,
            SystemBoard {
                vendor: some("Dell Inc."),
                product: some("PowerEdge R740"),
                serial: some("7XK2M53"),
                board_vendor: some("Dell Inc."),
                board_name: some("06WXJT"),
                board_serial: some(".7XK2M53.CNFCP0098C00AB."),
                bios_version: some("2.19.1"),
            }
        );
    }

    #[test]
    fn dell_r740_disks_skip_virtual_devices() {
        let inv = collect(&fixture("dell-r740"));
        assert_eq!(
            inv.disks,
            vec![
                Disk {
                    name: "nvme0n1".into(),
                    model: some("Dell Express Flash NVMe P4610 1.6TB SFF"),
                    serial: some("PHLN0123004X1P6AGN"),
                    size_bytes: 3_125_627_568 * 512,
                    rotational: Some(false),
                },
                Disk {
                    name: "sda".into(),
                    model: some("Samsung SSD 870"),
                    serial: some("S6PWNF0T123456A"),
                    size_bytes: 976_773_168 * 512,
                    rotational: Some(false),
                },
                Disk {
                    name: "sdb".into(),
                    model: some("ST4000NM0035-1V4"),
                    serial: some("ZC1ABCDE"),
                    size_bytes: 7_814_037_168 * 512,
                    rotational: Some(true),
                },
            ]
        );
    }

    #[test]
    fn dell_r740_network_and_power() {
        let inv = collect(&fixture("dell-r740"));
        assert_eq!(
            inv.interfaces,
            vec![
                Interface {
                    name: "eno1".into(),
                    mac: some("b0:26:28:aa:bb:cc"),
                    speed_mbps: Some(1000),
                    up: Some(true),
                    addresses: vec!["2001:db8:1e::40".into()],
                },
                Interface {
                    name: "eno2".into(),
                    mac: some("b0:26:28:aa:bb:cd"),
                    speed_mbps: None,
                    up: Some(false),
                    addresses: vec![],
                },
            ]
        );
        assert_eq!(inv.ip_addresses, ["10.20.30.40", "2001:db8:1e::40"]);
        assert_eq!(
            inv.power_supplies,
            vec![
                PowerSupply {
                    name: "PSU1".into(),
                    manufacturer: some("DELL"),
                    model: some("0TN1RNA02"),
                    kind: some("Mains"),
                    online: Some(true),
                },
                PowerSupply {
                    name: "PSU2".into(),
                    manufacturer: some("DELL"),
                    model: some("0TN1RNA02"),
                    kind: some("Mains"),
                    online: Some(false),
                },
            ]
        );
    }

    #[test]
    fn dell_r740_summary_lines() {
        let lines = collect(&fixture("dell-r740")).summary_lines();
        let expected = [
            ("Hostname", "bkp-r740-07"),
            ("OS", "Debian GNU/Linux 12 (bookworm)"),
            ("Kernel", "6.1.0-18-amd64"),
            ("CPU", "2 × Intel Xeon Silver 4214 (4 cores, 4 threads)"),
            ("RAM", "64 GiB installed (63 GiB usable)"),
            ("System", "Dell Inc. PowerEdge R740"),
            ("Serial", "7XK2M53"),
            ("Board", "Dell Inc. 06WXJT, S/N .7XK2M53.CNFCP0098C00AB."),
            ("BIOS", "2.19.1"),
            (
                "Disks",
                "nvme0n1 Dell Express Flash NVMe P4610 1.6TB SFF 1.6 TB, S/N PHLN0123004X1P6AGN",
            ),
            ("", "sda Samsung SSD 870 500.1 GB, S/N S6PWNF0T123456A"),
            ("", "sdb ST4000NM0035-1V4 4 TB, S/N ZC1ABCDE"),
            (
                "Interfaces",
                "eno1 b0:26:28:aa:bb:cc, 1 Gb/s, up, 2001:db8:1e::40",
            ),
            ("", "eno2 b0:26:28:aa:bb:cd, down"),
            ("IP addresses", "10.20.30.40"),
            ("", "2001:db8:1e::40"),
            ("PSU", "PSU1 DELL 0TN1RNA02, Mains, online"),
            ("", "PSU2 DELL 0TN1RNA02, Mains, offline"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn minimal_vm_leaves_unknowns_absent() {
        let inv = collect(&fixture("minimal-vm"));
        // Only /usr/lib/os-release exists: the fallback is taken.
        assert_eq!(inv.os, some("Ubuntu 24.04 LTS"));
        assert_eq!(inv.hostname, some("ci-runner-3"));
        assert_eq!(inv.kernel, some("6.8.0-31-generic"));
        assert_eq!(
            inv.cpu,
            Cpu {
                model: some("QEMU Virtual CPU version 2.5+"),
                sockets: None,
                cores: None,
                threads: Some(2),
            }
        );
        assert_eq!(inv.memory_bytes, Some(2_014_232 * 1024));
        assert_eq!(inv.memory_gib_rounded(), Some(2));
        assert_eq!(
            inv.system,
            SystemBoard {
                vendor: some("QEMU"),
                product: some("Standard PC (i440FX + PIIX, 1996)"),
                bios_version: some("1.16.3-debian-1.16.3-2"),
                ..SystemBoard::default()
            }
        );
        // sr0 holds no disc (size 0) and is left out.
        assert_eq!(
            inv.disks,
            vec![Disk {
                name: "vda".into(),
                model: None,
                serial: None,
                size_bytes: 41_943_040 * 512,
                rotational: Some(true),
            }]
        );
        assert_eq!(
            inv.interfaces,
            vec![Interface {
                name: "ens3".into(),
                mac: some("52:54:00:12:34:56"),
                speed_mbps: None,
                up: Some(true),
                addresses: vec![],
            }]
        );
        // No fib_trie and only link-local and loopback IPv6.
        assert!(inv.ip_addresses.is_empty());
        assert!(inv.power_supplies.is_empty());

        let lines = inv.summary_lines();
        let get = |label: &str| {
            lines
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("CPU"),
            Some("QEMU Virtual CPU version 2.5+ (2 threads)")
        );
        assert_eq!(get("Serial"), Some("unknown"));
        assert_eq!(get("Board"), Some("unknown"));
        assert_eq!(get("Disks"), Some("vda 21.5 GB"));
        assert_eq!(get("IP addresses"), Some("none"));
        assert_eq!(get("PSU"), Some("none"));
    }

    #[test]
    fn empty_root_gives_empty_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let inv = collect(dir.path());
        assert_eq!(inv, Inventory::default());
        assert_eq!(inv.memory_gib_rounded(), None);
        let lines = inv.summary_lines();
        assert_eq!(lines.len(), 13);
        assert!(lines.iter().all(|(_, v)| v == "unknown" || v == "none"));
    }

    #[test]
    fn missing_root_gives_empty_inventory() {
        let inv = collect(Path::new("/nonexistent/cadang-inventory-root"));
        assert_eq!(inv, Inventory::default());
    }

    #[test]
    fn local_machine_does_not_panic() {
        let inv = collect_local();
        if cfg!(target_os = "linux") {
            assert!(inv.kernel.is_some());
        }
        // Whatever the machine, the summary must render.
        assert!(!inv.summary_lines().is_empty());
    }

    #[test]
    fn inventory_round_trips_through_json() {
        let inv = collect(&fixture("dell-r740"));
        let json = serde_json::to_string(&inv).unwrap();
        let back: Inventory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn memory_rounds_to_nearest_gib_at_least_one() {
        let gib = |bytes| {
            Inventory {
                memory_bytes: Some(bytes),
                ..Inventory::default()
            }
            .memory_gib_rounded()
        };
        assert_eq!(gib(0), Some(1));
        assert_eq!(gib(300 << 20), Some(1));
        assert_eq!(gib((1 << 30) + (511 << 20)), Some(1));
        assert_eq!(gib((1 << 30) + (512 << 20)), Some(2));
        assert_eq!(gib(u64::MAX), Some(u64::MAX >> 30));
    }

    #[test]
    fn installed_memory_is_recovered_from_memtotal() {
        let installed = |gib: f64| {
            Inventory {
                memory_bytes: Some((gib * (1u64 << 30) as f64) as u64),
                ..Inventory::default()
            }
            .memory_gib_installed()
        };
        assert_eq!(installed(62.65), Some(64));
        assert_eq!(installed(15.6), Some(16));
        assert_eq!(installed(1.92), Some(2));
        assert_eq!(installed(23.5), Some(24));
        assert_eq!(installed(47.1), Some(48));
        assert_eq!(installed(94.3), Some(96));
        assert_eq!(installed(188.6), Some(192));
        assert_eq!(installed(1008.0), Some(1024));
        assert_eq!(installed(11.7), Some(12));
    }

    #[test]
    fn dmi_placeholders_are_absent() {
        for value in [
            "",
            "to be filled by o.e.m.",
            "Default String",
            "NOT SPECIFIED",
            "System Serial Number",
            "0123456789",
            "None",
            "0000000000",
            "XXXXXXXX",
        ] {
            assert!(is_dmi_placeholder(value), "{value:?}");
        }
        for value in ["Dell Inc.", "7XK2M53", "QEMU", "R", "1.0"] {
            assert!(!is_dmi_placeholder(value), "{value:?}");
        }
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "NAME=Plain\nPRETTY_NAME='Single quoted'\nX=\"a \\\"b\\\" \\$c\"\n";
        assert_eq!(os_release_field(text, "NAME"), some("Plain"));
        assert_eq!(os_release_field(text, "PRETTY_NAME"), some("Single quoted"));
        assert_eq!(os_release_field(text, "X"), some("a \"b\" $c"));
        assert_eq!(os_release_field(text, "ID"), None);
        assert_eq!(os_release_field("PRETTY_NAME=\"\"", "PRETTY_NAME"), None);
    }

    #[test]
    fn cpuinfo_without_cpu_cores_on_one_socket_has_no_core_count() {
        let text = "processor : 0\nphysical id : 0\ncpu cores : 8\n\n\
                    processor : 1\nphysical id : 1\n\n";
        let cpu = parse_cpuinfo(text.lines().map(str::to_owned));
        assert_eq!(cpu.sockets, Some(2));
        assert_eq!(cpu.cores, None);
        assert_eq!(cpu.threads, Some(2));
        assert_eq!(cpu.model, None);
    }

    #[test]
    fn vpd_page_80_serials() {
        assert_eq!(vpd_unit_serial(b"\x00\x80\x00\x05 AB1 "), some("AB1"));
        // Length beyond the data read: take what is there.
        assert_eq!(vpd_unit_serial(b"\x00\x80\x00\x40XY"), some("XY"));
        assert_eq!(vpd_unit_serial(b"\x00\x83\x00\x02XY"), None);
        assert_eq!(vpd_unit_serial(b"\x00\x80"), None);
        assert_eq!(vpd_unit_serial(b"\x00\x80\x00\x02\xff\x01"), None);
    }

    #[test]
    fn display_formats() {
        assert_eq!(decimal_size(0), "0 B");
        assert_eq!(decimal_size(949), "949 B");
        assert_eq!(decimal_size(999), "1 kB");
        assert_eq!(decimal_size(21_474_836_480), "21.5 GB");
        assert_eq!(decimal_size(480_103_981_056), "480.1 GB");
        assert_eq!(decimal_size(999_960_000_000), "1 TB");
        assert_eq!(decimal_size(4_000_787_030_016), "4 TB");
        assert_eq!(decimal_size(u64::MAX), "18446.7 PB");
        assert_eq!(link_speed(100), "100 Mb/s");
        assert_eq!(link_speed(2500), "2.5 Gb/s");
        assert_eq!(link_speed(25000), "25 Gb/s");
        assert_eq!(
            short_cpu_model("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz"),
            "Intel Core i7-8700"
        );
        assert_eq!(
            short_cpu_model("AMD EPYC 7302 16-Core Processor"),
            "AMD EPYC 7302 16-Core"
        );
        let cpu = Cpu {
            model: some("Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz"),
            sockets: Some(2),
            cores: Some(24),
            threads: Some(48),
        };
        assert_eq!(
            cpu_summary(&cpu).as_deref(),
            Some("2 × Intel Xeon Silver 4214 (24 cores, 48 threads)")
        );
        assert_eq!(cpu_summary(&Cpu::default()), None);
    }
}
