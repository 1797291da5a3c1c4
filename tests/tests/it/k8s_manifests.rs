//! The Kubernetes manifests in deploy/k8s, validated offline: strict schema
//! validation with `kubernetes-validate` (PyPI, ships the schemas of every
//! Kubernetes release; no cluster, no network) plus Sluice's own rules
//! (probes, grace period above the drain time, selectors, HPA target), by
//! `tests/python/validate_k8s.py`. tests/setup.sh installs the validator.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validate(dir: &Path) -> Output {
    let py = sluice_tests::python();
    let probe = Command::new(&py)
        .args(["-c", "import kubernetes_validate, yaml"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e} (set SLUICE_PYTHON)"));
    assert!(
        probe.status.success(),
        "the validator is missing: tests/setup.sh installs it \
         (python3 -m pip install kubernetes-validate): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    Command::new(&py)
        .arg(root().join("tests/python/validate_k8s.py"))
        .args(["-k", "1.30.0", "-k", "1.37.0"])
        .arg(dir)
        .output()
        .expect("run validate_k8s.py")
}

#[test]
fn k8s_manifests_are_valid() {
    let out = validate(&root().join("deploy/k8s"));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "deploy/k8s does not validate:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 0 failed"), "{text}");
    // Every resource was schema-checked, for both versions.
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("ok    schema") && l.contains(&format!(" {kind}/")))
                .count(),
            2,
            "{kind} schema-checked against 1.30 and 1.37:\n{text}"
        );
    }
}

/// The validator is not a rubber stamp: a typo'd field, a wrong probe path,
/// a grace period below the drain time, and metrics scraped or the admin
/// listener put on the public port are each caught.
#[test]
fn k8s_validator_rejects_broken_manifests() {
    let src = root().join("deploy/k8s");
    let deployment =
        std::fs::read_to_string(src.join("deployment.yaml")).expect("read deployment.yaml");
    let breakages = [
        (
            "failureThreshold: 30",
            "failureTreshold: 30",
            "Additional properties",
        ),
        (
            "path: /readyz",
            "path: /ready",
            "FAIL  readinessProbe on /readyz",
        ),
        (
            "terminationGracePeriodSeconds: 40",
            "terminationGracePeriodSeconds: 20",
            "FAIL  terminationGracePeriodSeconds",
        ),
        (
            "prometheus.io/port: \"9090\"",
            "prometheus.io/port: \"8080\"",
            "FAIL  Prometheus scrapes the admin port",
        ),
        (
            "- name: SLUICE_ADMIN_LISTEN\n              value: 0.0.0.0:9090",
            "- name: SLUICE_ADMIN_LISTEN\n              value: 0.0.0.0:8080",
            "FAIL  operator surface on its own container port",
        ),
    ];
    for (from, to, expect) in breakages {
        assert!(deployment.contains(from), "deployment.yaml has {from:?}");
        let dir =
            std::env::temp_dir().join(format!("sluice-k8s-{}-{}", std::process::id(), from.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for entry in std::fs::read_dir(&src).expect("read deploy/k8s") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
        }
        std::fs::write(
            dir.join("deployment.yaml"),
            deployment.replacen(from, to, 1),
        )
        .expect("write");
        let out = validate(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success(), "{to:?} passed validation:\n{text}");
        assert!(
            text.contains(expect),
            "{to:?}: expected {expect:?} in:\n{text}"
        );
    }
}
