#!/usr/bin/env python3
"""Offline validation of the Kubernetes manifests in deploy/k8s.

1. Schema: every resource the kustomization lists is validated, strictly
   (unknown fields are errors), with `kubernetes-validate` (PyPI; it ships
   the OpenAPI schemas of each Kubernetes release, so no cluster and no
   network are needed) against each version given with -k.
2. Sluice's own rules, which a schema cannot see: selectors match the pod
   labels, probes point at /healthz and /readyz, the grace period is above
   preStop + drain time, requests are set (the HPA scales on CPU), the
   HPA, PDB and Service target the Deployment, the kustomization's config
   carries the Redis URL, and the operator surface (dashboard, /metrics) is
   on its own port (SLUICE_ADMIN_LISTEN), scraped there and kept out of the
   Service.

    python3 tests/python/validate_k8s.py [-k 1.30.0 -k 1.37.0] [DIR]

Prints one line per check and `N passed, N failed`; exits 1 on a failure.
"""

import argparse
import os
import sys

import kubernetes_validate
import yaml

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok    " if ok else "FAIL  ") + name + ("" if ok or not detail else f": {detail}"))


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def literals(kust, name):
    for gen in kust.get("configMapGenerator", []):
        if gen.get("name") == name:
            return dict(lit.split("=", 1) for lit in gen.get("literals", []))
    return {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", "--kubernetes-version", action="append", dest="versions")
    ap.add_argument("dir", nargs="?", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "k8s"))
    a = ap.parse_args()
    versions = a.versions or ["1.30.0", kubernetes_validate.latest_version()]

    kust_path = os.path.join(a.dir, "kustomization.yaml")
    kust = load_docs(kust_path)[0]
    check("kustomization kind", kust.get("kind") == "Kustomization"
          and kust.get("apiVersion", "").startswith("kustomize.config.k8s.io/"))

    resources = {}
    for rel in kust.get("resources", []):
        path = os.path.join(a.dir, rel)
        if not os.path.isfile(path):
            check(f"resource file {rel}", False, "missing")
            continue
        for doc in load_docs(path):
            for v in versions:
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                    check(f"schema {rel} {doc['kind']}/{doc['metadata']['name']} (k8s {v}, strict)", True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    check(f"schema {rel} {doc.get('kind')} (k8s {v})", False, f"{where}: {e.message}")
                except Exception as e:  # unknown kind / version
                    check(f"schema {rel} {doc.get('kind')} (k8s {v})", False, repr(e))
            resources[doc["kind"]] = doc

    for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]:
        check(f"{kind} present", kind in resources)
    dep = resources.get("Deployment")
    if not dep:
        return report()

    sel = dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    check("Deployment selector matches its pod labels",
          all(labels.get(k) == v for k, v in sel.items()))
    svc = resources.get("Service", {})
    check("Service selects the edge pods",
          bool(svc) and all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()))
    pdb = resources.get("PodDisruptionBudget", {})
    check("PodDisruptionBudget selects the edge pods",
          bool(pdb) and all(labels.get(k) == v
                            for k, v in pdb["spec"]["selector"]["matchLabels"].items()))
    hpa = resources.get("HorizontalPodAutoscaler", {})
    target = hpa.get("spec", {}).get("scaleTargetRef", {})
    check("HPA targets the Deployment",
          target.get("kind") == "Deployment" and target.get("name") == dep["metadata"]["name"])
    check("HPA scales on CPU", any(
        m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
        for m in hpa.get("spec", {}).get("metrics", [])))
    check("HPA keeps at least 2 edges", hpa.get("spec", {}).get("minReplicas", 1) >= 2)
    check("Deployment leaves replicas to the HPA", "replicas" not in dep["spec"])

    spec = pod["spec"]
    edge = spec["containers"][0]
    port_names = {p.get("name") for p in edge.get("ports", [])}
    check("Service targets the edge's port", all(
        p["targetPort"] in port_names or p["targetPort"] == 8080
        for p in svc.get("spec", {}).get("ports", [])))

    def probe_path(name):
        return edge.get(name, {}).get("httpGet", {}).get("path")

    check("readinessProbe on /readyz", probe_path("readinessProbe") == "/readyz")
    check("livenessProbe on /healthz", probe_path("livenessProbe") == "/healthz")
    req = edge.get("resources", {}).get("requests", {})
    check("resource requests (cpu, memory)", "cpu" in req and "memory" in req)

    cfg = literals(kust, "sluice-edge")
    check("config names the Redis dependency (SLUICE_REDIS_URL)", "SLUICE_REDIS_URL" in cfg)
    drain = int(cfg.get("SLUICE_DRAIN_SECS", "10"))
    pre = edge.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(f"terminationGracePeriodSeconds ({grace}) > preStop ({pre}) + drain ({drain}) + 5",
          grace > pre + drain + 5)
    env_from = {e.get("configMapRef", {}).get("name") for e in edge.get("envFrom", [])}
    check("edge reads the generated config", "sluice-edge" in env_from)
    env = {e["name"]: e for e in edge.get("env", [])}
    check("distinct node ids (SLUICE_NODE_ID from the pod name)",
          env.get("SLUICE_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
          .get("fieldPath") == "metadata.name")
    # The operator surface: its own container port, scraped there, never
    # behind the Service (its stats stream names live tasks and pods).
    admin = env.get("SLUICE_ADMIN_LISTEN", {}).get("value") or cfg.get("SLUICE_ADMIN_LISTEN", "")
    admin_port = int(admin.rsplit(":", 1)[1]) if admin.rsplit(":", 1)[-1].isdigit() else None
    ports = {p.get("name"): p.get("containerPort") for p in edge.get("ports", [])}
    check("operator surface on its own container port (SLUICE_ADMIN_LISTEN)",
          admin_port is not None and admin_port in ports.values()
          and admin_port != ports.get("http"), f"SLUICE_ADMIN_LISTEN={admin!r}, ports {ports}")
    ann = pod["metadata"].get("annotations", {})
    check("Prometheus scrapes the admin port",
          ann.get("prometheus.io/scrape") != "true"
          or ann.get("prometheus.io/port") == str(admin_port),
          f"prometheus.io/port {ann.get('prometheus.io/port')!r}, admin port {admin_port}")
    svc_targets = {ports.get(p["targetPort"], p["targetPort"])
                   for p in svc.get("spec", {}).get("ports", [])}
    check("Service does not expose the admin port", admin_port not in svc_targets,
          f"Service targets {svc_targets}")
    image_names = {i.get("name") for i in kust.get("images", [])}
    check("kustomization sets the edge image", edge["image"] in image_names)
    return report()


def report() -> int:
    passed = sum(1 for r in results if r)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
