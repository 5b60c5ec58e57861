//! Small OCI images built locally, without a registry: one uncompressed layer holding Debian's static busybox
//! (`/bin/busybox` plus a symlink for every applet it lists), `/etc/passwd`, `/etc/group` and `/tmp`, packed as
//! an OCI image layout tar that `ctr image import` accepts. Every digest is computed here (sha256).
//!
//! The tars are cached under the test binary's target directory, named by the manifest digest, so a changed
//! busybox or recipe gives a new file and an unchanged one is written once.
//!
//! Trusted inputs only: the host's `/bin/busybox` and the recipe below.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

/// The host file the images are built from (Debian `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// `hull.test/busybox:1`: busybox with `Cmd ["sh"]`.
pub const BUSYBOX_IMAGE: &str = "hull.test/busybox:1";

/// `hull.test/pause:1`: the CRI sandbox image; its `Cmd` sleeps for ever (`sleep 2147483647`).
pub const PAUSE_IMAGE: &str = "hull.test/pause:1";

/// The `PATH` set in the images' config.
pub const IMAGE_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A built image: its reference and the OCI layout tar holding it.
#[derive(Clone, Debug)]
pub struct OciImage {
    /// The full reference `ctr` and CRI know it by, e.g. `hull.test/busybox:1`.
    pub reference: String,
    /// The OCI image layout tar.
    pub tar: PathBuf,
    /// `sha256:...` of the image manifest.
    pub manifest_digest: String,
}

/// The busybox image (`Cmd ["sh"]`), built once per content.
pub fn busybox_image() -> OciImage {
    build_cached(BUSYBOX_IMAGE, &["sh"])
}

/// The busybox image whose config runs as `user` (`"UID:GID"`), e.g. for tests that compare the user a
/// runtime applies.
pub fn busybox_image_as(reference: &str, user: &str) -> OciImage {
    build_cached_as(reference, &["sh"], Some(user))
}

/// The pause image for CRI sandboxes (`Cmd ["sleep", "2147483647"]`).
pub fn pause_image() -> OciImage {
    build_cached(PAUSE_IMAGE, &["sleep", "2147483647"])
}

/// Where built image tars are kept: `target/<profile>/hull-test-images/` (next to `deps/`, which holds the test
/// executable), else the system temp dir.
pub fn image_cache_dir() -> PathBuf {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf));
    from_exe.unwrap_or_else(std::env::temp_dir).join("hull-test-images")
}

/// Builds the image `reference` with `cmd` as its `Cmd` from the host's busybox, or reuses the cached tar.
pub fn build_cached(reference: &str, cmd: &[&str]) -> OciImage {
    build_cached_as(reference, cmd, None)
}

/// As [`build_cached`], with the image config's `User` when given.
fn build_cached_as(reference: &str, cmd: &[&str], user: Option<&str>) -> OciImage {
    build_cached_with(reference, cmd, user, &[])
}

/// One entry an image adds to the busybox root filesystem, or replaces there when the path is the same
/// (e.g. `etc/passwd`). Paths are relative (`usr/sbin/nginx`); entries are owned by root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootEntry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link to `target`, a path of the same layer (e.g. `bin/busybox`).
    HardLink {
        path: String,
        target: String,
    },
}

impl RootEntry {
    pub fn path(&self) -> &str {
        match self {
            RootEntry::Dir { path, .. }
            | RootEntry::File { path, .. }
            | RootEntry::Symlink { path, .. }
            | RootEntry::HardLink { path, .. } => path,
        }
    }
}

/// As [`build_cached`], with the config's `User` when given and `extra` entries in the root filesystem (their
/// parent directories are created, mode 0755, when the base lacks them).
pub fn build_cached_with(reference: &str, cmd: &[&str], user: Option<&str>, extra: &[RootEntry]) -> OciImage {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX}: {e} (install busybox-static: scripts/install-test-deps.sh)"));
    let layout = build_layout_with(reference, cmd, user, &busybox, &busybox_applets(), extra);
    let dir = image_cache_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let short = &layout.manifest_digest["sha256:".len().."sha256:".len() + 16];
    let name = reference.replace(['/', ':'], "_");
    let tar = dir.join(format!("{name}-{short}.tar"));
    if !tar.is_file() {
        // Write under a unique name and rename, so parallel tests never read a half-written tar.
        let tmp = dir.join(format!(".{name}-{short}.{}.{}", std::process::id(), unique()));
        std::fs::write(&tmp, &layout.tar).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &tar).unwrap_or_else(|e| panic!("rename to {}: {e}", tar.display()));
    }
    OciImage {
        reference: reference.to_string(),
        tar,
        manifest_digest: layout.manifest_digest,
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Applet paths (`bin/sh`, `usr/bin/nc`, ...) that `busybox --list-full` prints, without `bin/busybox` itself
/// and entries outside a directory (`linuxrc`).
pub fn busybox_applets() -> Vec<String> {
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .unwrap_or_else(|e| panic!("run {BUSYBOX} --list-full: {e}"));
    assert!(out.status.success(), "{BUSYBOX} --list-full failed: {}", out.status);
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains('/') && *l != "bin/busybox" && !l.starts_with('/') && !l.contains(".."))
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    applets
}

/// An OCI image layout in memory.
pub struct Layout {
    pub tar: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::from("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The OCI architecture name of the host.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds the OCI layout tar (`oci-layout`, `index.json`, `blobs/sha256/*`) of a one-layer image.
pub fn build_layout(reference: &str, cmd: &[&str], busybox: &[u8], applets: &[String]) -> Layout {
    build_layout_as(reference, cmd, None, busybox, applets)
}

/// As [`build_layout`], with the image config's `User` when given.
pub fn build_layout_as(
    reference: &str,
    cmd: &[&str],
    user: Option<&str>,
    busybox: &[u8],
    applets: &[String],
) -> Layout {
    build_layout_with(reference, cmd, user, busybox, applets, &[])
}

/// As [`build_layout_as`], with `extra` entries in the root filesystem (see [`build_cached_with`]).
pub fn build_layout_with(
    reference: &str,
    cmd: &[&str],
    user: Option<&str>,
    busybox: &[u8],
    applets: &[String],
    extra: &[RootEntry],
) -> Layout {
    let layer = rootfs_layer(busybox, applets, extra);
    let layer_digest = sha256_digest(&layer);
    let mut image_config = json!({
        "Env": [IMAGE_PATH_ENV],
        "Cmd": cmd,
        "WorkingDir": "/",
    });
    if let Some(user) = user {
        image_config["User"] = user.into();
    }
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": image_config,
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "hull-tests oci_image.rs (busybox-static)" }],
    }))
    .expect("serialize image config");
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .expect("serialize manifest");
    let manifest_digest = sha256_digest(&manifest);
    let tag = reference.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("serialize index");

    let mut tar = TarWriter::default();
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    tar.file("index.json", 0o644, &index);
    tar.dir("blobs", 0o755);
    tar.dir("blobs/sha256", 0o755);
    for (digest, blob) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        tar.file(&format!("blobs/sha256/{}", &digest["sha256:".len()..]), 0o644, blob);
    }
    Layout {
        tar: tar.finish(),
        manifest_digest,
        config_digest,
        layer_digest,
    }
}

/// The root filesystem layer (an uncompressed tar): the busybox base, then `extra` (whose paths replace the
/// base's).
fn rootfs_layer(busybox: &[u8], applets: &[String], extra: &[RootEntry]) -> Vec<u8> {
    let mut dirs: BTreeSet<String> = [
        "bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let parents = |path: &str, dirs: &mut BTreeSet<String>| {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    };
    for applet in applets {
        parents(applet, &mut dirs);
    }
    for entry in extra {
        parents(entry.path(), &mut dirs);
    }
    let replaced: BTreeSet<&str> = extra.iter().map(RootEntry::path).collect();
    let mut tar = TarWriter::default();
    for dir in dirs.iter().filter(|d| !replaced.contains(d.as_str())) {
        tar.dir(dir, 0o755);
    }
    if !replaced.contains("tmp") {
        tar.dir("tmp", 0o1777);
    }
    tar.file("bin/busybox", 0o755, busybox);
    if !replaced.contains("etc/passwd") {
        tar.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        );
    }
    if !replaced.contains("etc/group") {
        tar.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    }
    for applet in applets.iter().filter(|a| !replaced.contains(a.as_str())) {
        tar.symlink(applet, "/bin/busybox");
    }
    for entry in extra {
        match entry {
            RootEntry::Dir { path, mode } => tar.dir(path, *mode),
            RootEntry::File { path, mode, data } => tar.file(path, *mode, data),
            RootEntry::Symlink { path, target } => tar.symlink(path, target),
            RootEntry::HardLink { path, target } => tar.hardlink(path, target),
        }
    }
    tar.finish()
}

/// A minimal ustar writer: directories, regular files, symlinks and hard links owned by root, mtime 0.
#[derive(Default)]
struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    fn dir(&mut self, path: &str, mode: u32) {
        self.header(&format!("{path}/"), mode, 0, b'5', "");
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.header(path, mode, data.len() as u64, b'0', "");
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.header(path, 0o777, 0, b'2', target);
    }

    fn hardlink(&mut self, path: &str, target: &str) {
        self.header(path, 0o755, 0, b'1', target);
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8, link: &str) {
        assert!(
            path.len() <= 100 && link.len() <= 100,
            "tar name too long: {path} -> {link}"
        );
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        put_octal(&mut h[100..108], mode as u64);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], size);
        put_octal(&mut h[136..148], 0);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.out.extend_from_slice(&h);
    }

    fn pad(&mut self) {
        let rem = self.out.len() % 512;
        if rem != 0 {
            self.out.resize(self.out.len() + 512 - rem, 0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// Writes `value` as zero-padded octal filling `field` but its last byte (NUL).
fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    assert!(
        text.len() == width,
        "value {value:o} does not fit a {width}-digit tar field"
    );
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_digests_match_blobs_and_tar_is_well_formed() {
        let applets = vec!["bin/sh".to_string(), "usr/bin/nc".to_string()];
        let layout = build_layout("hull.test/x:2", &["sh"], b"not really busybox", &applets);
        let tar = &layout.tar;
        assert_eq!(tar.len() % 512, 0);
        // Walk the headers: every checksum verifies, every blob's name is its own digest.
        let mut off = 0;
        let mut names = Vec::new();
        while off + 512 <= tar.len() && tar[off] != 0 {
            let h = &tar[off..off + 512];
            let mut copy = h.to_vec();
            copy[148..156].fill(b' ');
            let sum: u32 = copy.iter().map(|&b| b as u32).sum();
            let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
            assert_eq!(sum, stored);
            let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
            let size = u64::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap() as usize;
            let data = &tar[off + 512..off + 512 + size];
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256_digest(data), format!("sha256:{hex}"));
            }
            names.push(name);
            off += 512 + size.div_ceil(512) * 512;
        }
        assert!(names.contains(&"index.json".to_string()));
        assert!(names.contains(&format!("blobs/sha256/{}", &layout.manifest_digest[7..])));
        assert!(names.contains(&format!("blobs/sha256/{}", &layout.config_digest[7..])));
        assert!(names.contains(&format!("blobs/sha256/{}", &layout.layer_digest[7..])));
    }

    #[test]
    fn extra_entries_are_added_and_replace_the_bases() {
        let applets = vec!["bin/sh".to_string(), "usr/bin/nc".to_string()];
        let extra = [
            RootEntry::File {
                path: "etc/passwd".into(),
                mode: 0o644,
                data: b"me:x:1000:1000::/:/bin/sh\n".to_vec(),
            },
            RootEntry::File {
                path: "usr/local/bin/prog".into(),
                mode: 0o4755,
                data: b"#!".to_vec(),
            },
        ];
        let layer = rootfs_layer(b"bb", &applets, &extra);
        let mut entries = Vec::new();
        let mut off = 0;
        while off + 512 <= layer.len() && layer[off] != 0 {
            let h = &layer[off..off + 512];
            let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
            let mode = u32::from_str_radix(std::str::from_utf8(&h[100..107]).unwrap(), 8).unwrap();
            let size = u64::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap() as usize;
            entries.push((name, mode, layer[off + 512..off + 512 + size].to_vec()));
            off += 512 + size.div_ceil(512) * 512;
        }
        let passwd: Vec<_> = entries.iter().filter(|e| e.0 == "etc/passwd").collect();
        assert_eq!(passwd.len(), 1, "one etc/passwd");
        assert_eq!(passwd[0].2, b"me:x:1000:1000::/:/bin/sh\n");
        assert!(entries.iter().any(|e| e.0 == "usr/local/" && e.1 == 0o755));
        assert!(entries.iter().any(|e| e.0 == "usr/local/bin/prog" && e.1 == 0o4755));
        assert!(entries.iter().any(|e| e.0 == "etc/group"));
        // Without extras the layer is what it always was.
        assert_eq!(
            build_layout("hull.test/x:2", &["sh"], b"bb", &applets).manifest_digest,
            build_layout_with("hull.test/x:2", &["sh"], None, b"bb", &applets, &[]).manifest_digest
        );
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
