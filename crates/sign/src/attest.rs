//! The in-toto statements rebased attests a version with: SLSA provenance
//! v1 and an SPDX 2.3 SBOM of the operating-system packages (dpkg's
//! `var/lib/dpkg/status` and `status.d/`, apk's `lib/apk/db/installed`,
//! with `/etc/os-release`) read from the image's layers. No IO but reading
//! the layer streams given.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{DateTime, SecondsFormat, Utc};
use rebased_core::Digest;
use serde_json::{json, Value};

/// The predicate type of SLSA provenance v1.
pub const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/v1";
/// The predicate type of an SPDX document.
pub const SPDX: &str = "https://spdx.dev/Document";
/// The in-toto statement type.
pub const STATEMENT: &str = "https://in-toto.io/Statement/v1";

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn subject(name: &str, digests: &[&Digest]) -> Value {
    digests
        .iter()
        .map(|d| json!({"name": name, "digest": {d.algorithm(): d.encoded()}}))
        .collect()
}

/// What a provenance statement says about one build.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    /// The repository (`127.0.0.1:5000/team/web`).
    pub repository: &'a str,
    /// The version's manifest digest.
    pub digest: &'a Digest,
    /// The image's name in the config.
    pub image: &'a str,
    /// The version.
    pub version: &'a str,
    /// Every base reference and the digest built from.
    pub bases: &'a BTreeMap<String, Digest>,
    /// The source's URL and revision, when the image has one.
    pub source: Option<(&'a str, &'a str)>,
    /// rebased's version.
    pub rebased_version: &'a str,
    /// The backend that built it (`native`, `buildah`, ...).
    pub backend: &'a str,
    /// What caused the build.
    pub trigger: &'a str,
    /// The job.
    pub job: u64,
    /// When the build started.
    pub started: DateTime<Utc>,
    /// When the version was pushed.
    pub finished: DateTime<Utc>,
}

/// The SLSA provenance v1 statement of `p` (JSON).
pub fn provenance(p: &Provenance<'_>) -> Vec<u8> {
    let mut deps: Vec<Value> = p
        .bases
        .iter()
        .map(|(base, d)| {
            json!({
                "uri": format!("{base}@{d}"),
                "digest": {d.algorithm(): d.encoded()},
            })
        })
        .collect();
    if let Some((url, revision)) = p.source {
        // A git commit id, or the content hash of a watched local context.
        let digest = if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            json!({"gitCommit": revision})
        } else {
            match Digest::parse(revision) {
                Ok(d) => json!({d.algorithm(): d.encoded()}),
                Err(_) => json!({"revision": revision}),
            }
        };
        deps.push(json!({"uri": url, "digest": digest}));
    }
    let statement = json!({
        "_type": STATEMENT,
        "subject": subject(p.repository, &[p.digest]),
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": "urn:rebased:build:v1",
                "externalParameters": {
                    "image": p.image,
                    "version": p.version,
                    "trigger": p.trigger,
                },
                "internalParameters": {"job": p.job},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": format!("urn:rebased:{}:{}", p.rebased_version, p.backend),
                    "version": {"rebased": p.rebased_version, "backend": p.backend},
                },
                "metadata": {
                    "invocationId": format!("job-{}", p.job),
                    "startedOn": time(&p.started),
                    "finishedOn": time(&p.finished),
                },
            },
        },
    });
    statement.to_string().into_bytes()
}

/// The files of an image that say which packages it holds, as its layers
/// leave them (later layers win; whiteouts remove).
#[derive(Debug, Default, Clone)]
pub struct PackageFiles {
    files: BTreeMap<String, Vec<u8>>,
    /// The sum of the files' sizes.
    held: usize,
}

/// Largest package database file read (a dpkg status of a big image is a
/// few MiB); a larger one is refused, not cut. (Smaller in unit tests,
/// which check the logic without building hundreds of MiB.)
#[cfg(not(test))]
const MAX_FILE: u64 = 64 << 20;
#[cfg(test)]
const MAX_FILE: u64 = 1 << 20;
/// Largest sum of the package files held at once (a layer can hold any
/// number of `status.d/` entries).
#[cfg(not(test))]
const MAX_TOTAL: usize = 256 << 20;
#[cfg(test)]
const MAX_TOTAL: usize = 4 << 20;
/// Most package files held at once.
const MAX_FILES: usize = 100_000;

fn wanted(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || path == "lib/apk/db/installed"
        || path == "etc/os-release"
        || path == "usr/lib/os-release"
        || path
            .strip_prefix("var/lib/dpkg/status.d/")
            .is_some_and(|f| !f.is_empty() && !f.contains('/'))
}

fn too_large(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl PackageFiles {
    /// Applies one layer (a tar, gzip-compressed or not): the package
    /// files it writes replace earlier ones, its whiteouts remove them.
    pub fn apply_layer(&mut self, layer: impl Read) -> std::io::Result<()> {
        let mut buffered = std::io::BufReader::new(layer);
        let gzip = {
            let head = std::io::BufRead::fill_buf(&mut buffered)?;
            head.starts_with(&[0x1f, 0x8b])
        };
        if gzip {
            self.apply_tar(flate2::read::GzDecoder::new(buffered))
        } else {
            self.apply_tar(buffered)
        }
    }

    fn apply_tar(&mut self, r: impl Read) -> std::io::Result<()> {
        let mut archive = tar::Archive::new(r);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let path = raw
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned();
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if name == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                self.files.retain(|p, _| !p.starts_with(&prefix));
                self.held = self.files.values().map(Vec::len).sum();
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                let gone = if dir.is_empty() {
                    gone.to_owned()
                } else {
                    format!("{dir}/{gone}")
                };
                let prefix = format!("{gone}/");
                self.files
                    .retain(|p, _| *p != gone && !p.starts_with(&prefix));
                self.held = self.files.values().map(Vec::len).sum();
                continue;
            }
            if !wanted(&path) || !entry.header().entry_type().is_file() {
                continue;
            }
            let mut bytes = Vec::new();
            entry.by_ref().take(MAX_FILE + 1).read_to_end(&mut bytes)?;
            if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE {
                return Err(too_large(format!("{path} is larger than {MAX_FILE} bytes")));
            }
            self.held += bytes.len();
            if let Some(old) = self.files.insert(path, bytes) {
                self.held -= old.len();
            }
            if self.files.len() > MAX_FILES {
                return Err(too_large(format!(
                    "more than {MAX_FILES} package database files"
                )));
            }
            if self.held > MAX_TOTAL {
                return Err(too_large(format!(
                    "package database files over {MAX_TOTAL} bytes in all"
                )));
            }
        }
        Ok(())
    }

    fn text(&self, path: &str) -> Option<String> {
        self.files
            .get(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The packages: dpkg's (installed ones of `status`, and every
    /// `status.d` entry), then apk's, sorted by manager and name.
    pub fn packages(&self) -> Vec<Package> {
        let mut out = Vec::new();
        let dpkg = self
            .files
            .iter()
            .filter(|(p, _)| p.starts_with("var/lib/dpkg/status"));
        for (path, bytes) in dpkg {
            let from_status = path == "var/lib/dpkg/status";
            for para in paragraphs(&String::from_utf8_lossy(bytes), ':') {
                let installed = para
                    .get("Status")
                    .is_none_or(|s| s.split_whitespace().last() == Some("installed"));
                if from_status && !installed {
                    continue;
                }
                if let (Some(name), Some(version)) = (para.get("Package"), para.get("Version")) {
                    out.push(Package {
                        manager: "deb",
                        name: name.clone(),
                        version: version.clone(),
                        arch: para.get("Architecture").cloned(),
                    });
                }
            }
        }
        if let Some(apk) = self.text("lib/apk/db/installed") {
            for para in paragraphs(&apk, ':') {
                if let (Some(name), Some(version)) = (para.get("P"), para.get("V")) {
                    out.push(Package {
                        manager: "apk",
                        name: name.clone(),
                        version: version.clone(),
                        arch: para.get("A").cloned(),
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// `/etc/os-release` (or `/usr/lib/os-release`) as key -> value.
    pub fn os_release(&self) -> BTreeMap<String, String> {
        let text = self
            .text("etc/os-release")
            .or_else(|| self.text("usr/lib/os-release"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect()
    }
}

/// RFC 822-like paragraphs (dpkg `Key: value`, apk `K:value`); continuation
/// lines (starting with a space) are skipped.
fn paragraphs(text: &str, sep: char) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        if let Some((k, v)) = line.split_once(sep) {
            cur.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One operating-system package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// `deb` or `apk`.
    pub manager: &'static str,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its architecture, when recorded.
    pub arch: Option<String>,
}

/// The SPDX 2.3 SBOM statement of the image `repository@digest` holding
/// `files`, created at `created` by rebased `rebased_version`. A child of
/// an index names the `index` as a second subject: its SBOM is kept under
/// the index's attestations, and a verifier (cosign's
/// `verify-attestation`, Kyverno) keeps only statements whose subject is
/// the digest it was asked about.
pub fn sbom(
    repository: &str,
    digest: &Digest,
    index: Option<&Digest>,
    files: &PackageFiles,
    created: DateTime<Utc>,
    rebased_version: &str,
) -> Vec<u8> {
    let os = files.os_release();
    let distro = os
        .get("ID")
        .cloned()
        .unwrap_or_else(|| "unknown".to_owned());
    let mut packages: Vec<Value> = files
        .packages()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let arch = p
                .arch
                .as_ref()
                .map(|a| format!("?arch={a}"))
                .unwrap_or_default();
            json!({
                "name": p.name,
                "SPDXID": format!("SPDXRef-Package-{}-{i}", p.manager),
                "versionInfo": p.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "primaryPackagePurpose": "LIBRARY",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": format!("pkg:{}/{distro}/{}@{}{arch}", p.manager, p.name, p.version),
                }],
            })
        })
        .collect();
    if !os.is_empty() {
        packages.push(json!({
            "name": distro,
            "SPDXID": "SPDXRef-OperatingSystem",
            "versionInfo": os.get("VERSION_ID").cloned().unwrap_or_default(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "comment": os.get("PRETTY_NAME").cloned().unwrap_or_default(),
        }));
    }
    let document = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{repository}@{digest}"),
        "documentNamespace": format!("urn:rebased:spdx:{repository}@{digest}"),
        "creationInfo": {
            "created": time(&created),
            "creators": [format!("Tool: rebased-{rebased_version}")],
        },
        // SPDX 2.3 asks for the elements the document describes.
        "relationships": packages
            .iter()
            .filter_map(|p| p["SPDXID"].as_str())
            .map(|id| json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": id,
            }))
            .collect::<Vec<_>>(),
        "packages": packages,
    });
    json!({
        "_type": STATEMENT,
        "subject": subject(repository, &std::iter::once(digest).chain(index).collect::<Vec<_>>()),
        "predicateType": SPDX,
        "predicate": document,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, text.as_bytes())
                .expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn a_child_sbom_names_the_index_as_its_second_subject() {
        let (child, index) = (Digest::sha256(b"child"), Digest::sha256(b"index"));
        let f = PackageFiles::default();
        let doc: Value = serde_json::from_slice(&sbom(
            "r/app",
            &child,
            Some(&index),
            &f,
            Utc::now(),
            "0.1.0",
        ))
        .expect("json");
        let subjects: Vec<&str> = doc["subject"]
            .as_array()
            .expect("subjects")
            .iter()
            .filter_map(|s| s["digest"]["sha256"].as_str())
            .collect();
        assert_eq!(subjects, [child.encoded(), index.encoded()]);
    }

    #[test]
    fn hostile_layers_are_refused_not_held() {
        // A package file over the cap is an error, not a silently cut file.
        let big = "x".repeat(usize::try_from(MAX_FILE).expect("fits") + 1);
        let err = PackageFiles::default()
            .apply_layer(layer(&[("var/lib/dpkg/status", &big)]).as_slice())
            .expect_err("too large");
        assert!(err.to_string().contains("var/lib/dpkg/status"), "{err}");
        // Many status.d entries: their sum is bounded.
        let part = "y".repeat(512 << 10);
        let names: Vec<String> = (0..20)
            .map(|i| format!("var/lib/dpkg/status.d/p{i}"))
            .collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), part.as_str())).collect();
        let err = PackageFiles::default()
            .apply_layer(layer(&files).as_slice())
            .expect_err("too much in all");
        assert!(err.to_string().contains("in all"), "{err}");
        // A file replaced by a later layer counts once.
        let mut f = PackageFiles::default();
        for _ in 0..20 {
            f.apply_layer(layer(&[("var/lib/dpkg/status.d/p", &part)]).as_slice())
                .expect("one file, replaced");
        }
    }

    #[test]
    fn packages_from_dpkg_and_apk_through_layers_and_whiteouts() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        let mut f = PackageFiles::default();
        f.apply_layer(
            layer(&[
                ("var/lib/dpkg/status", status),
                (
                    "var/lib/dpkg/status.d/tzdata",
                    "Package: tzdata\nVersion: 2024a\nArchitecture: all\n",
                ),
                ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
                (
                    "lib/apk/db/installed",
                    "P:musl\nV:1.2.4-r2\nA:x86_64\n\nP:busybox\nV:1.36.1-r5\n",
                ),
            ])
            .as_slice(),
        )
        .expect("layer");
        let names: Vec<(&str, String)> = f
            .packages()
            .iter()
            .map(|p| (p.manager, p.name.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("apk", "busybox".into()),
                ("apk", "musl".into()),
                ("deb", "libc6".into()),
                ("deb", "tzdata".into())
            ]
        );
        // A later gzip layer whites out the apk database and tzdata.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut gz,
            &layer(&[
                ("lib/apk/db/.wh.installed", ""),
                ("var/lib/dpkg/status.d/.wh.tzdata", ""),
            ]),
        )
        .expect("gzip");
        f.apply_layer(gz.finish().expect("gzip").as_slice())
            .expect("layer");
        let names: Vec<String> = f.packages().iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["libc6"]);
        let doc: Value = serde_json::from_slice(&sbom(
            "r/app",
            &Digest::sha256(b"x"),
            None,
            &f,
            Utc::now(),
            "0.1.0",
        ))
        .expect("json");
        assert_eq!(doc["predicate"]["spdxVersion"], "SPDX-2.3");
        let pkgs = doc["predicate"]["packages"].as_array().expect("packages");
        assert_eq!(pkgs.len(), 2);
        let described: Vec<&Value> = doc["predicate"]["relationships"]
            .as_array()
            .expect("relationships")
            .iter()
            .filter(|r| r["relationshipType"] == "DESCRIBES")
            .map(|r| &r["relatedSpdxElement"])
            .collect();
        let ids: Vec<&Value> = pkgs.iter().map(|p| &p["SPDXID"]).collect();
        assert_eq!(described, ids, "the document describes each package");
        assert_eq!(
            pkgs[0]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9?arch=amd64"
        );
        assert_eq!(pkgs[1]["primaryPackagePurpose"], "OPERATING-SYSTEM");
    }

    #[test]
    fn provenance_names_bases_source_builder_and_times() {
        let d = Digest::sha256(b"v");
        let base = Digest::sha256(b"b");
        let bases = BTreeMap::from([("r/base:latest".to_owned(), base.clone())]);
        let p = Provenance {
            repository: "r/app",
            digest: &d,
            image: "app",
            version: "1.0.1",
            bases: &bases,
            source: Some(("https://git.example/app.git", &"a".repeat(40))),
            rebased_version: "0.1.0",
            backend: "native",
            trigger: "poll",
            job: 7,
            started: Utc::now(),
            finished: Utc::now(),
        };
        let s: Value = serde_json::from_slice(&provenance(&p)).expect("json");
        assert_eq!(s["subject"][0]["digest"]["sha256"], d.encoded());
        let deps = s["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .expect("deps");
        assert_eq!(deps[0]["uri"], format!("r/base:latest@{base}"));
        assert_eq!(deps[1]["digest"]["gitCommit"], "a".repeat(40));
        assert_eq!(
            s["predicate"]["runDetails"]["builder"]["id"],
            "urn:rebased:0.1.0:native"
        );
        assert_eq!(
            s["predicate"]["runDetails"]["metadata"]["invocationId"],
            "job-7"
        );
    }
}
