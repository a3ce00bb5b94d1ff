"""The offline API refuses what a real API server refuses: the official OpenAPI schemas (oldest and
newest supported Kubernetes), the server's own field rules, and Pod Security admission."""

import json

import pytest
from coiled_k8s.offline import schemas
from coiled_k8s.offline.podsecurity import LABEL_ENFORCE
from coiled_k8s.options import default_image

from coiled_core.testing import wait_until

NS = "default"


@pytest.fixture(scope="module")
def core(offline_k8s):
    from kubernetes import client

    return client.CoreV1Api(offline_k8s.api_client(superuser=True))


@pytest.fixture(scope="module")
def raw(offline_k8s):
    """``raw(method, path, body, **query)``: a request sent as is (the kubernetes client would
    refuse some of these bodies before sending them), answering (status code, reply)."""
    import http.client
    import ssl
    import urllib.parse

    context = ssl.create_default_context(cadata=offline_k8s.ca_pem)

    def send(method, path, body=None, **query):
        connection = http.client.HTTPSConnection("127.0.0.1", offline_k8s.api.port, context=context, timeout=30)
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        connection.request(method, path + ("?" + urllib.parse.urlencode(query) if query else ""),
                           body=json.dumps(body) if body is not None else None,
                           headers={"Authorization": f"Bearer {offline_k8s.superuser_token}",
                                    "Content-Type": content_type})
        reply = connection.getresponse()
        data = json.loads(reply.read() or b"{}")
        connection.close()
        return reply.status, data
    return send


def refusal(raw, method, path, body=None, **query):
    """The Status of a refused request (the test fails if it goes through)."""
    code, status = raw(method, path, body, **query)
    assert code >= 400, status
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["code"] == code
    return status


def pods(namespace=NS):
    return f"/api/v1/namespaces/{namespace}/pods"


def services(namespace=NS):
    return f"/api/v1/namespaces/{namespace}/services"


def pod(name, **container):
    return {"metadata": {"name": name},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": default_image(), "command": ["true"], **container}]}}


def test_the_schemas_are_the_oldest_and_newest_supported_versions():
    from kubernetes_validate.utils import all_versions

    shipped = {v.rsplit(".", 1)[0] for v in all_versions()}
    assert set(schemas.VERSIONS) <= shipped
    assert schemas.VERSIONS[0] == "1.25"  # Pod Security admission GA: what the pods are made for
    assert tuple(map(int, schemas.VERSIONS[-1].split("."))) >= (1, 37)


def test_a_missing_required_field_is_422_invalid_with_causes(core, raw):
    body = pod("no-name")
    del body["spec"]["containers"][0]["name"]
    status = refusal(raw, "POST", pods(), body)
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["message"].startswith('Pod "no-name" is invalid: ')
    assert {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].name"} \
        in status["details"]["causes"]
    assert status["details"]["name"] == "no-name" and status["details"]["kind"] == "Pod"


def test_a_pod_without_an_image_is_422(core, raw):
    body = pod("no-image")
    del body["spec"]["containers"][0]["image"]
    status = refusal(raw, "POST", pods(), body)
    assert status["code"] == 422
    assert {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"} \
        in status["details"]["causes"]


def test_a_value_of_the_wrong_type_cannot_be_decoded_400(core, raw):
    status = refusal(raw, "POST", pods(), pod("bad-port", ports=[{"containerPort": "http"}]))
    assert (status["code"], status["reason"]) == (400, "BadRequest")
    assert "cannot be handled as a Pod" in status["message"] and "containerPort" in status["message"]


def test_values_outside_the_servers_enums_are_422(core, raw):
    status = refusal(raw, "POST", services(), {"metadata": {"name": "bad-type"},
                                                          "spec": {"type": "Public", "ports": [{"port": 80}]}})
    assert status["code"] == 422
    assert status["details"]["causes"] == [{"reason": "FieldValueNotSupported", "field": "spec.type", "message":
                                            'Unsupported value: "Public": supported values: "ClusterIP", '
                                            '"ExternalName", "LoadBalancer", "NodePort"'}]
    body = pod("bad-restart")
    body["spec"]["restartPolicy"] = "Sometimes"
    assert refusal(raw, "POST", pods(), body)["details"]["causes"][0]["field"] == "spec.restartPolicy"


def test_source_ranges_only_on_a_load_balancer_and_only_cidrs(core, raw):
    spec = {"type": "NodePort", "ports": [{"port": 80}], "loadBalancerSourceRanges": ["203.0.113.7/32"]}
    status = refusal(raw, "POST", services(), {"metadata": {"name": "np-ranges"}, "spec": spec})
    assert status["details"]["causes"][0]["reason"] == "FieldValueForbidden"
    spec = {"type": "LoadBalancer", "ports": [{"port": 80}], "loadBalancerSourceRanges": ["me"]}
    status = refusal(raw, "POST", services(), {"metadata": {"name": "lb-ranges"}, "spec": spec})
    assert status["details"]["causes"][0]["field"] == "spec.loadBalancerSourceRanges[0]"


def test_an_undeclared_field_strict_is_400_else_dropped_with_a_warning(core, raw, offline_k8s):
    body = pod("typo", imagePullPolicyy="Always")
    status = refusal(raw, "POST", pods(), body, fieldValidation="Strict")
    assert (status["code"], status["reason"]) == (400, "BadRequest")
    assert 'strict decoding error: unknown field "spec.containers[0].imagePullPolicyy"' in status["message"]
    code, _ = raw("POST", pods(), body)  # the server's default (Warn): dropped
    try:
        assert code == 201
        stored = offline_k8s.store.get("pods", NS, "typo")
        assert "imagePullPolicyy" not in stored["spec"]["containers"][0]
        assert 'unknown field "spec.containers[0].imagePullPolicyy"' in offline_k8s.store.warnings
    finally:
        core.delete_namespaced_pod("typo", NS, grace_period_seconds=0)


def test_a_field_the_oldest_supported_version_lacks_is_refused(core, raw):
    # securityContext.appArmorProfile came with Kubernetes 1.30: a 1.25 server does not know it.
    body = pod("apparmor-field", securityContext={"appArmorProfile": {"type": "RuntimeDefault"}})
    status = refusal(raw, "POST", pods(), body, fieldValidation="Strict")
    assert "unknown field \"spec.containers[0].securityContext.appArmorProfile\"" in status["message"]


def test_updates_and_patches_are_validated_too(core, raw):
    core.create_namespaced_service(NS, {"metadata": {"name": "patched"}, "spec": {"ports": [{"port": 80}]}})
    try:
        status = refusal(raw, "PATCH", services() + "/patched", {"spec": {"type": "Public"}})
        assert status["code"] == 422
        current = core.api_client.sanitize_for_serialization(core.read_namespaced_service("patched", NS))
        current["spec"]["ports"][0]["protocol"] = "QUIC"
        assert refusal(raw, "PUT", services() + "/patched", current)["code"] == 422
    finally:
        core.delete_namespaced_service("patched", NS)


def test_objects_in_a_namespace_that_does_not_exist_are_404(core, raw):
    status = refusal(raw, "POST", "/api/v1/namespaces/nowhere/configmaps", {"metadata": {"name": "x"}})
    assert (status["code"], status["message"]) == (404, 'namespaces "nowhere" not found')


# -- Pod Security admission ------------------------------------------------------------------
@pytest.fixture(scope="module")
def namespaces(offline_k8s):
    for level in ("baseline", "restricted", "privileged"):
        offline_k8s.create_namespace(f"pss-{level}", {LABEL_ENFORCE: level})
    return {level: f"pss-{level}" for level in ("baseline", "restricted", "privileged")}


def restricted_pod(name, **changes):
    """A pod that meets the restricted standard, with ``changes`` to its container's securityContext."""
    context = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
               "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}, **changes}
    return pod(name, securityContext={k: v for k, v in context.items() if v is not None})


def forbidden(raw, namespace, body):
    status = refusal(raw, "POST", pods(namespace), body)
    assert (status["code"], status["reason"]) == (403, "Forbidden")
    return status["message"]


def test_a_pod_that_meets_the_standard_is_admitted(core, raw, namespaces):
    for namespace in namespaces.values():
        core.create_namespaced_pod(namespace, restricted_pod("fine"))
        core.delete_namespaced_pod("fine", namespace, grace_period_seconds=0)


BASELINE = [
    ("hostProcess", {"container": {"windowsOptions": {"hostProcess": True}}},
     'hostProcess (container "c" must not set securityContext.windowsOptions.hostProcess=true)'),
    ("host namespaces", {"spec": {"hostNetwork": True, "hostPID": True}}, "host namespaces (hostNetwork=true, hostPID=true)"),
    ("host ipc", {"spec": {"hostIPC": True}}, "host namespaces (hostIPC=true)"),
    ("privileged", {"container": {"privileged": True}},
     'privileged (container "c" must not set securityContext.privileged=true)'),
    ("capabilities", {"container": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}},
     'non-default capabilities (container "c" must not include "SYS_ADMIN" in securityContext.capabilities.add)'),
    ("hostPath", {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}, 'hostPath volumes (volume "root")'),
    ("hostPort", {"ports": [{"containerPort": 80, "hostPort": 8080}]}, 'hostPort (container "c" uses hostPort 8080)'),
    ("apparmor", {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}},
     'forbidden AppArmor profile (container.apparmor.security.beta.kubernetes.io/c="unconfined")'),
    ("selinux", {"container": {"seLinuxOptions": {"type": "spc_t"}}},
     'seLinuxOptions (container "c" set forbidden securityContext.seLinuxOptions: type "spc_t")'),
    ("procMount", {"container": {"procMount": "Unmasked"}},
     'procMount (container "c" must not set securityContext.procMount to "Unmasked")'),
    ("seccomp unconfined", {"container": {"seccompProfile": {"type": "Unconfined"}}},
     'seccompProfile (container "c" must not set securityContext.seccompProfile.type to "Unconfined")'),
    ("sysctls", {"spec": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}},
     "forbidden sysctls (kernel.msgmax)"),
]


def _apply(body, change):
    container = body["spec"]["containers"][0]
    container["securityContext"].update(change.get("container", {}))
    container.update({k: v for k, v in change.items() if k not in ("container", "spec", "annotations")})
    body["spec"].update(change.get("spec", {}))
    if "annotations" in change:
        body["metadata"]["annotations"] = change["annotations"]
    return body


@pytest.mark.parametrize(("rule", "change", "message"), BASELINE, ids=[b[0] for b in BASELINE])
def test_baseline_refuses(core, raw, namespaces, rule, change, message):
    body = _apply(restricted_pod("bad"), change)
    for level in ("baseline", "restricted"):
        text = forbidden(raw, namespaces[level], body)
        assert text.startswith(f'pods "bad" is forbidden: violates PodSecurity "{level}:latest": ')
        assert message in text
    core.create_namespaced_pod(namespaces["privileged"], body)  # privileged checks nothing
    core.delete_namespaced_pod("bad", namespaces["privileged"], grace_period_seconds=0)


RESTRICTED = [
    ("volume types", {"spec": {"volumes": [{"name": "share", "nfs": {"server": "nfs", "path": "/"}}]}},
     'restricted volume types (volume "share" uses restricted volume type "nfs")'),
    ("allowPrivilegeEscalation", {"container": {"allowPrivilegeEscalation": None}},
     'allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)'),
    ("runAsNonRoot", {"container": {"runAsNonRoot": None}},
     'runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true)'),
    ("runAsUser 0", {"container": {"runAsUser": 0}}, 'runAsUser=0 (container "c" must not set runAsUser=0)'),
    ("seccomp", {"container": {"seccompProfile": None}},
     'seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or '
     '"Localhost")'),
    ("drop ALL", {"container": {"capabilities": None}},
     'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"])'),
    ("add", {"container": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CHOWN"]}}},
     'unrestricted capabilities (container "c" must not include "CHOWN" in securityContext.capabilities.add)'),
]


@pytest.mark.parametrize(("rule", "change", "message"), RESTRICTED, ids=[r[0] for r in RESTRICTED])
def test_restricted_refuses_what_baseline_admits(core, raw, namespaces, rule, change, message):
    body = restricted_pod("bad")
    for key, value in change.get("container", {}).items():
        if value is None:
            body["spec"]["containers"][0]["securityContext"].pop(key)
    body = _apply(body, {**change, "container": {k: v for k, v in change.get("container", {}).items() if v is not None}})
    text = forbidden(raw, namespaces["restricted"], body)
    assert message in text
    core.create_namespaced_pod(namespaces["baseline"], body)
    core.delete_namespaced_pod("bad", namespaces["baseline"], grace_period_seconds=0)


def test_all_violations_in_one_message_and_the_pod_level_context_counts(core, raw, namespaces):
    body = pod("plain")  # no securityContext at all
    text = forbidden(raw, namespaces["restricted"], body)
    for control in ("allowPrivilegeEscalation != false", "unrestricted capabilities", "runAsNonRoot != true",
                    "seccompProfile"):
        assert control in text
    # runAsNonRoot and seccomp on the pod cover its containers.
    body = restricted_pod("pod-level", runAsNonRoot=None, seccompProfile=None)
    body["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    core.create_namespaced_pod(namespaces["restricted"], body)
    core.delete_namespaced_pod("pod-level", namespaces["restricted"], grace_period_seconds=0)
    body["spec"]["securityContext"]["runAsUser"] = 0
    assert "runAsUser=0 (pod must not set runAsUser=0)" in forbidden(raw, namespaces["restricted"], body)


def test_a_generated_name_and_a_relabelled_namespace(core, raw, offline_k8s, namespaces):
    body = pod("")
    body["metadata"] = {"generateName": "gen-"}
    assert forbidden(raw, namespaces["restricted"], body).startswith('pods "gen-" is forbidden')
    offline_k8s.create_namespace("pss-relabel")
    made = core.create_namespaced_pod("pss-relabel", body)
    core.delete_namespaced_pod(made.metadata.name, "pss-relabel", grace_period_seconds=0)
    offline_k8s.create_namespace("pss-relabel", {LABEL_ENFORCE: "restricted"})
    forbidden(raw, "pss-relabel", body)
    wait_until(lambda: not core.list_namespaced_pod("pss-relabel").items, 30)


def test_namespaces_are_served_and_their_labels_set_the_level(offline_k8s, raw):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    superuser = client.CoreV1Api(offline_k8s.api_client(superuser=True))
    superuser.create_namespace({"metadata": {"name": "pss-api"}})
    try:
        assert superuser.read_namespace("pss-api").metadata.labels == {"kubernetes.io/metadata.name": "pss-api"}
        assert raw("POST", pods("pss-api"), pod("ok"))[0] == 201  # no label: admitted
        superuser.patch_namespace("pss-api", {"metadata": {"labels": {LABEL_ENFORCE: "baseline"}}})
        body = pod("host")
        body["spec"]["hostNetwork"] = True
        assert "host namespaces (hostNetwork=true)" in forbidden(raw, "pss-api", body)
        # The backend's client (held to the Role of the docs) may not touch namespaces.
        with pytest.raises(ApiException) as info:
            client.CoreV1Api(offline_k8s.api_client()).read_namespace("pss-api")
        assert info.value.status == 403 and "at the cluster scope" in json.loads(info.value.body)["message"]
    finally:
        for made in superuser.list_namespaced_pod("pss-api").items:
            superuser.delete_namespaced_pod(made.metadata.name, "pss-api", grace_period_seconds=0)
        wait_until(lambda: not superuser.list_namespaced_pod("pss-api").items, 30)
