//! `cargo xtask image`: OCI image archives of sluice-proxy, sluice-cni and
//! sluice-dns, without a Docker engine or a base image.
//!
//! Each image is one layer holding one static executable under
//! `/usr/local/bin`. The archive is an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) in a tar file, written here byte for
//! byte: fixed mtimes, owners and entry order, gzip without a timestamp, JSON
//! with sorted keys. The same binaries therefore give the same digests, and
//! `podman load`, `skopeo copy oci-archive:...` and `ctr import` read it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, ensure, Context};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::util;

/// Where the manifests say the images live; `kustomize edit set image`
/// (or an overlay's `images:`) points a cluster at another registry.
pub const REGISTRY: &str = "ghcr.io/sluice-net";
/// Every image is tagged with the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One image: the cargo package and binary it is built from.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    pub image: &'static str,
    pub package: &'static str,
    pub bin: &'static str,
    /// Numeric `uid:gid` the image runs as unless the pod says otherwise.
    pub user: &'static str,
    pub description: &'static str,
}

pub const COMPONENTS: [Component; 3] = [
    Component {
        image: "sluice-proxy",
        package: "proxy-user",
        bin: "sluice-proxy",
        user: "0:0",
        description: "Sluice node agent: kube-proxy replacement with eBPF socket and tc load balancing",
    },
    Component {
        image: "sluice-cni",
        package: "sluice-cni",
        bin: "sluice-cni",
        user: "0:0",
        description: "Sluice CNI plugin, its installer (sluice-cni install) and the node overlay daemon",
    },
    Component {
        image: "sluice-dns",
        package: "sluice-dns",
        bin: "sluice-dns",
        user: "65532:65532",
        description: "Sluice cluster DNS server",
    },
];

/// `ghcr.io/sluice-net/sluice-proxy:0.1.0`.
pub fn image_ref(image: &str) -> String {
    format!("{REGISTRY}/{image}:{VERSION}")
}

/// The archive's file name under `target/images/`.
pub fn archive_name(image: &str) -> String {
    format!("{image}-{VERSION}.oci.tar")
}

#[derive(clap::Args, Debug, Default)]
pub struct ImageArgs {
    /// Build from debug binaries (quicker; for local tests, not for a registry).
    #[arg(long)]
    pub debug: bool,
    /// Only these images (sluice-proxy, sluice-cni, sluice-dns); default: all three.
    #[arg(long = "only", value_name = "IMAGE")]
    pub only: Vec<String>,
    /// Output directory (default: `<target>/images`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    for name in &args.only {
        ensure!(
            COMPONENTS.iter().any(|c| c.image == name),
            "unknown image {name:?}: the images are sluice-proxy, sluice-cni and sluice-dns"
        );
    }
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => util::target_dir()?.join("images"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for c in COMPONENTS.iter().filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c.image)) {
        let exe = build_static(c, !args.debug)?;
        let spec = ImageSpec::for_component(c, exe);
        let archive = oci_archive(&spec)?;
        let path = out.join(archive_name(c.image));
        write_atomically(&path, &archive.bytes)?;
        println!(
            "xtask: {} -> {} ({} bytes, manifest {})",
            image_ref(c.image),
            path.display(),
            archive.bytes.len(),
            archive.manifest_digest
        );
    }
    println!(
        "xtask: load with `podman load -i FILE`, `ctr -n k8s.io images import FILE`; push with \
         `skopeo copy oci-archive:FILE docker://REGISTRY/IMAGE:{VERSION}`"
    );
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Links the component's binary statically against glibc (`crt-static`,
/// non-PIE: no loader, nothing from the host) and returns its bytes, read
/// at once: a later ordinary build links the dynamic binary to the same path.
fn build_static(c: &Component, release: bool) -> anyhow::Result<Vec<u8>> {
    let mut cmd = util::cargo();
    cmd.args(["rustc", "-p", c.package, "--bin", c.bin, "--message-format=json-render-diagnostics"]);
    if release {
        cmd.arg("--release");
    }
    // Debug info stays out of images (it is most of a debug binary's size).
    cmd.args(["--", "-C", "target-feature=+crt-static", "-C", "relocation-model=static", "-C", "strip=debuginfo"]);
    println!("xtask: building {} statically ({})", c.bin, if release { "release" } else { "debug" });
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start cargo to build {}", c.bin))?;
    if !out.status.success() {
        bail!("building {} failed ({})", c.bin, out.status);
    }
    let exe = executable_from_messages(&String::from_utf8_lossy(&out.stdout), c.bin)
        .with_context(|| format!("cargo reported no executable for {}", c.bin))?;
    let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    ensure!(
        elf_is_static(&bytes)?,
        "{} asks for a dynamic loader (PT_INTERP): it would not start in an image without a base",
        exe.display()
    );
    Ok(bytes)
}

/// The `executable` of the last `compiler-artifact` message for binary `bin`.
fn executable_from_messages(stdout: &str, bin: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .last()
}

/// True when a 64-bit little-endian ELF has no `PT_INTERP` program header,
/// i.e. the kernel starts it without a dynamic loader.
pub fn elf_is_static(bytes: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(bytes.len() >= 64 && bytes[..4] == *b"\x7fELF", "not an ELF file");
    ensure!(bytes[4] == 2 && bytes[5] == 1, "not a 64-bit little-endian ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let phoff = usize::try_from(u64::from_le_bytes(bytes[0x20..0x28].try_into()?))?;
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    ensure!(phentsize >= 4, "ELF program header entries of {phentsize} bytes");
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(p_type) = bytes.get(at..at + 4) else {
            bail!("ELF program header {i} lies past the end of the file");
        };
        if u32::from_le_bytes(p_type.try_into()?) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A file in the image's single layer.
#[derive(Debug, Clone)]
pub struct File {
    /// Relative path, e.g. `usr/local/bin/sluice-proxy`.
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// What goes into one image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub version: String,
    pub entrypoint: Vec<String>,
    pub user: String,
    pub description: String,
    pub files: Vec<File>,
}

impl ImageSpec {
    pub fn for_component(c: &Component, exe: Vec<u8>) -> Self {
        ImageSpec {
            name: image_ref(c.image),
            version: VERSION.to_owned(),
            entrypoint: vec![format!("/usr/local/bin/{}", c.bin)],
            user: c.user.to_owned(),
            description: c.description.to_owned(),
            files: vec![File { path: format!("usr/local/bin/{}", c.bin), mode: 0o755, data: exe }],
        }
    }

    /// The repository's last component (`sluice-proxy`).
    fn title(&self) -> &str {
        let repo = self.name.rsplit_once(':').map_or(self.name.as_str(), |(r, _)| r);
        repo.rsplit('/').next().unwrap_or(repo)
    }

    /// The tag part of the name (`0.1.0`).
    fn tag(&self) -> &str {
        self.name.rsplit_once(':').map_or(self.version.as_str(), |(_, t)| t)
    }
}

/// A written archive and the digest of its image manifest (what a registry shows).
pub struct Archive {
    pub bytes: Vec<u8>,
    pub manifest_digest: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(bytes: &[u8]) -> anyhow::Result<Sha256Digest> {
    sha256_hex(bytes).parse().map_err(|e| anyhow::anyhow!("sha256 digest: {e}"))
}

/// JSON with object keys sorted at every level: oci-spec keeps labels and
/// annotations in `HashMap`s, whose order changes from run to run.
fn canonical_json<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// A tar header with everything that could vary between builds fixed.
fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> anyhow::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).with_context(|| format!("tar path {path}"))?;
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    Ok(h)
}

/// A tar stream of `files` with their parent directories, in sorted order.
fn layer_tar(files: &[File]) -> anyhow::Result<Vec<u8>> {
    let mut entries: Vec<(String, Option<&File>)> = Vec::new();
    for f in files {
        ensure!(
            !f.path.is_empty() && !f.path.starts_with('/') && !f.path.split('/').any(|c| c.is_empty() || c == ".."),
            "layer path {:?} must be relative and normalised",
            f.path
        );
        let mut dir = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir.push_str(part);
            dir.push('/');
            entries.push((dir.clone(), None));
        }
        entries.push((f.path.clone(), Some(f)));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0 && a.1.is_none() && b.1.is_none());
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        match file {
            None => builder.append(&header(&path, tar::EntryType::Directory, 0o755, 0)?, std::io::empty())?,
            Some(f) => builder.append(
                &header(&path, tar::EntryType::Regular, f.mode, f.data.len() as u64)?,
                f.data.as_slice(),
            )?,
        }
    }
    Ok(builder.into_inner()?)
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    // No file name and mtime 0 in the header: the output depends on the input only.
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

fn descriptor(media_type: MediaType, bytes: &[u8]) -> anyhow::Result<Descriptor> {
    Ok(Descriptor::new(media_type, bytes.len() as u64, digest(bytes)?))
}

/// Builds the OCI image layout of `spec` as a tar archive, deterministically.
pub fn oci_archive(spec: &ImageSpec) -> anyhow::Result<Archive> {
    let layer = layer_tar(&spec.files)?;
    let layer_gz = gzip(&layer)?;
    let labels = [
        ("org.opencontainers.image.title", spec.title()),
        ("org.opencontainers.image.version", spec.version.as_str()),
        ("org.opencontainers.image.description", spec.description.as_str()),
        ("org.opencontainers.image.licenses", "Apache-2.0 OR MIT"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into_iter()
    .collect::<std::collections::HashMap<_, _>>();
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .entrypoint(spec.entrypoint.clone())
                .env(vec!["PATH=/usr/local/bin".to_owned()])
                .user(spec.user.clone())
                .working_dir("/")
                .labels(labels)
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{}", sha256_hex(&layer))])
                .build()?,
        )
        .build()?;
    let config_json = canonical_json(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_json)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer_gz)?])
        .build()?;
    let manifest_json = canonical_json(&manifest)?;
    // ref.name carries the tag (skopeo's `oci-archive:FILE:TAG`, the OCI
    // convention); containerd and podman take the full name from
    // io.containerd.image.name.
    let manifest_desc = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(manifest_json.len() as u64)
        .digest(digest(&manifest_json)?)
        .annotations(
            [
                ("io.containerd.image.name".to_owned(), spec.name.clone()),
                ("org.opencontainers.image.ref.name".to_owned(), spec.tag().to_owned()),
            ]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?;
    let index_json = canonical_json(&index)?;

    let mut blobs = vec![
        (sha256_hex(&config_json), config_json.as_slice()),
        (sha256_hex(&layer_gz), layer_gz.as_slice()),
        (sha256_hex(&manifest_json), manifest_json.as_slice()),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tar = tar::Builder::new(Vec::new());
    let mut file = |path: &str, data: &[u8]| -> anyhow::Result<()> {
        tar.append(&header(path, tar::EntryType::Regular, 0o644, data.len() as u64)?, data)?;
        Ok(())
    };
    file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    file("index.json", &index_json)?;
    drop(file);
    tar.append(&header("blobs/", tar::EntryType::Directory, 0o755, 0)?, std::io::empty())?;
    tar.append(&header("blobs/sha256/", tar::EntryType::Directory, 0o755, 0)?, std::io::empty())?;
    for (hex, data) in blobs {
        let path = format!("blobs/sha256/{hex}");
        tar.append(&header(&path, tar::EntryType::Regular, 0o644, data.len() as u64)?, data)?;
    }
    Ok(Archive { bytes: tar.into_inner()?, manifest_digest: format!("sha256:{}", sha256_hex(&manifest_json)) })
}

/// `skopeo` and `podman` are optional: used by the tests when present.
#[cfg(test)]
fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read as _;

    use super::*;

    fn spec(data: &[u8]) -> ImageSpec {
        ImageSpec::for_component(&COMPONENTS[0], data.to_vec())
    }

    /// Entry path -> bytes of a tar stream.
    fn untar(bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(bytes);
        for e in archive.entries().expect("tar entries") {
            let mut e = e.expect("tar entry");
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("tar data");
            assert_eq!(h.mtime().unwrap(), 0, "every mtime must be 0");
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "every entry must be owned by 0:0");
            out.insert(e.path().unwrap().to_string_lossy().into_owned(), (h.entry_type(), h.mode().unwrap(), data));
        }
        out
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn building_twice_gives_the_same_bytes_and_digest() {
        let a = oci_archive(&spec(b"\x7fELF binary")).unwrap();
        let b = oci_archive(&spec(b"\x7fELF binary")).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert!(a.bytes == b.bytes, "two builds of the same input must be byte-identical");
        let c = oci_archive(&spec(b"\x7fELF other")).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest, "another binary must give another digest");
    }

    #[test]
    fn the_layout_is_an_oci_image_layout_whose_digests_and_sizes_match_the_blobs() {
        let a = oci_archive(&spec(b"the binary")).unwrap();
        let files = untar(&a.bytes);
        assert_eq!(json(&files["oci-layout"].2), serde_json::json!({"imageLayoutVersion": "1.0.0"}));
        let blob = |d: &serde_json::Value| -> Vec<u8> {
            let digest = d["digest"].as_str().unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            let data = files[&format!("blobs/sha256/{hex}")].2.clone();
            assert_eq!(sha256_hex(&data), hex, "blob {hex} must hash to its name");
            assert_eq!(d["size"].as_u64(), Some(data.len() as u64), "size of {digest}");
            data
        };
        let index = json(&files["index.json"].2);
        assert_eq!(index["schemaVersion"], 2);
        let m = &index["manifests"][0];
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(m["annotations"]["io.containerd.image.name"], format!("ghcr.io/sluice-net/sluice-proxy:{VERSION}"));
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], VERSION);
        assert_eq!(m["digest"], a.manifest_digest);
        let manifest = json(&blob(m));
        assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        let config = json(&blob(&manifest["config"]));
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/sluice-proxy"]));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], VERSION);
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.title"], "sluice-proxy");
        assert!(config.get("created").is_none(), "no build time in the config: {config}");
        let layer_desc = &manifest["layers"][0];
        assert_eq!(layer_desc["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(blob(layer_desc).as_slice()).read_to_end(&mut layer).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", sha256_hex(&layer)), "diff_id is the uncompressed layer's digest");
        let entries = untar(&layer);
        let paths: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(paths, ["usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/sluice-proxy"]);
        let exe = &entries["usr/local/bin/sluice-proxy"];
        assert_eq!((exe.0, exe.1, exe.2.as_slice()), (tar::EntryType::Regular, 0o755, b"the binary".as_slice()));
    }

    #[test]
    fn json_keys_are_sorted_at_every_level() {
        let v = serde_json::json!({"b": {"z": 1, "a": [ {"y": 1, "x": 2} ]}, "a": 0});
        assert_eq!(String::from_utf8(canonical_json(&v).unwrap()).unwrap(), r#"{"a":0,"b":{"a":[{"x":2,"y":1}],"z":1}}"#);
    }

    #[test]
    fn a_layer_path_that_escapes_or_is_absolute_is_refused() {
        for bad in ["/usr/bin/x", "../x", "usr//x", ""] {
            let f = File { path: bad.to_owned(), mode: 0o755, data: Vec::new() };
            assert!(layer_tar(&[f]).is_err(), "{bad:?} must be refused");
        }
    }

    /// A minimal ELF64 header with the given program header types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&u16::try_from(types.len()).unwrap().to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn an_elf_with_an_interpreter_is_dynamic_and_one_without_is_static() {
        assert!(!elf_is_static(&elf(&[6, 3, 1])).unwrap(), "PT_INTERP means a dynamic loader");
        assert!(elf_is_static(&elf(&[6, 1, 2])).unwrap(), "static-pie keeps PT_DYNAMIC but has no PT_INTERP");
        assert!(elf_is_static(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(&[1]);
        truncated.truncate(66);
        assert!(elf_is_static(&truncated).is_err(), "a truncated header table is an error, not a panic");
    }

    #[test]
    fn cargo_messages_name_the_executable() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"sluice-k8s"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"sluice-proxy"},"executable":"/t/debug/sluice-proxy"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executable_from_messages(msgs, "sluice-proxy"), Some(PathBuf::from("/t/debug/sluice-proxy")));
        assert_eq!(executable_from_messages(msgs, "sluice-dns"), None);
    }

    #[test]
    fn skopeo_reads_the_archive_as_an_oci_archive() {
        let Some(skopeo) = tool("skopeo") else {
            panic!("skopeo is not installed (`cargo xtask setup` installs it)");
        };
        let dir = std::env::temp_dir().join(format!("sluice-xtask-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img.oci.tar");
        let a = oci_archive(&spec(b"not run, only inspected")).unwrap();
        std::fs::write(&path, &a.bytes).unwrap();
        let out = std::process::Command::new(skopeo)
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}:{VERSION}", path.display()))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "skopeo inspect failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            format!("sha256:{}", sha256_hex(&out.stdout)),
            a.manifest_digest,
            "skopeo must return the manifest the index points at"
        );
    }
}
