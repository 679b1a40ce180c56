//! The native backend's view of a Dockerfile: parse, `Plan::new`, then every
//! step applied to an image config (`Stage::apply`), with `--chown` resolved
//! against a small `/etc/passwd`.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rebased_builder::native::image::{Platform, Stage};
use rebased_builder::native::passwd::resolve_chown;
use rebased_builder::native::plan::{copy_args, Plan};
use rebased_core::dockerfile::Dockerfile;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\n";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let build_args: BTreeMap<String, String> = [("V", "1"), ("USER", "app")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Ok(df) = Dockerfile::parse(&text, &build_args) else {
        return;
    };
    let Ok(plan) = Plan::new(&df, &build_args) else {
        return;
    };
    let base: rebased_core::oci::ImageConfig = serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "HOME=/root"], "Cmd": ["sh"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": []
    }))
    .expect("a valid config");
    let platform = Platform::parse("linux/amd64").expect("valid platform");
    let mut stage = Stage::new(
        plan.base.as_ref().map(|_| &base),
        &platform,
        &plan.globals,
        plan.escape,
        "1970-01-01T00:00:00Z".to_owned(),
    );
    for step in &plan.steps {
        if matches!(step.keyword.as_str(), "COPY" | "ADD") {
            let _ = copy_args(&step.args, plan.escape);
        }
        match stage.apply(step, &build_args) {
            Ok(Some(copy)) => {
                if let Some(chown) = &copy.chown {
                    let _ = resolve_chown(chown, Some(PASSWD), Some(GROUP));
                }
                stage.add_layer(
                    "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a",
                    copy.created_by,
                );
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let _ = stage.finish(&BTreeMap::new());
});
