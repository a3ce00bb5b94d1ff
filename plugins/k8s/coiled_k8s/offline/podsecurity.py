"""Pod Security admission, as the API server enforces it on the pods created in a namespace.

A namespace labelled ``pod-security.kubernetes.io/enforce`` with ``baseline`` or ``restricted``
gets every new pod checked against that level of the Pod Security Standards
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, the checks as of their
``latest`` version); ``privileged``, or no label, checks nothing. A violating pod is refused with
``403 Forbidden`` and the server's message::

    pods "x" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false
    (container "c" must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true (...)

Each check below is one of the standard's controls, worded as the admission plugin words it
(k8s.io/pod-security-admission/policy). Windows pods' exemptions are not modelled.
"""

from __future__ import annotations


LABEL_ENFORCE = "pod-security.kubernetes.io/enforce"
LABEL_ENFORCE_VERSION = "pod-security.kubernetes.io/enforce-version"
LEVELS = ("privileged", "baseline", "restricted")

#: Capabilities a baseline pod may add (the container runtimes' defaults).
BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                   "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
#: Sysctls a baseline pod may set (the kubelet's safe set).
SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                          "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                          "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                          "net.ipv4.tcp_keepalive_probes"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
#: Volume types a restricted pod may use.
RESTRICTED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret")
_VOLUME_SOURCES = RESTRICTED_VOLUMES + (
    "hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi", "glusterfs", "rbd", "flexVolume",
    "cinder", "cephfs", "flocker", "fc", "azureFile", "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk",
    "portworxVolume", "scaleIO", "storageos", "image")


def _containers(spec: dict) -> list[dict]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or []),
            *(spec.get("ephemeralContainers") or [])]


def _names(what: str, names: list[str]) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    return f"{what} {quoted}" if len(names) == 1 else f"{what}s {quoted}"


def _context(container: dict) -> dict:
    return container.get("securityContext") or {}


def _baseline(pod: dict) -> list[str]:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    pod_context = spec.get("securityContext") or {}
    containers = _containers(spec)
    found = []
    # HostProcess
    host_process = [c["name"] for c in containers if (_context(c).get("windowsOptions") or {}).get("hostProcess")]
    if (pod_context.get("windowsOptions") or {}).get("hostProcess") or host_process:
        who = "pod" + (f" and {_names('container', host_process)}" if host_process else "") if (
            pod_context.get("windowsOptions") or {}).get("hostProcess") else _names("container", host_process)
        found.append(f"hostProcess ({who} must not set securityContext.windowsOptions.hostProcess=true)")
    # Host namespaces
    namespaces = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    if namespaces:
        found.append(f"host namespaces ({', '.join(namespaces)})")
    # Privileged containers
    privileged = [c["name"] for c in containers if _context(c).get("privileged")]
    if privileged:
        found.append(f"privileged ({_names('container', privileged)} must not set securityContext.privileged=true)")
    # Capabilities beyond the default set
    extra = []
    for c in containers:
        added = [a for a in (_context(c).get("capabilities") or {}).get("add") or [] if a not in BASELINE_CAPABILITIES]
        if added:
            extra.append(f'container "{c["name"]}" must not include {", ".join(repr(a).replace(chr(39), chr(34)) for a in added)} '
                         "in securityContext.capabilities.add")
    if extra:
        found.append(f"non-default capabilities ({'; '.join(extra)})")
    # HostPath volumes
    host_paths = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_paths:
        found.append(f"hostPath volumes ({_names('volume', host_paths)})")
    # Host ports
    ports = []
    for c in containers:
        used = [str(p["hostPort"]) for p in c.get("ports") or [] if p.get("hostPort")]
        if used:
            ports.append(f'container "{c["name"]}" uses {"hostPort" if len(used) == 1 else "hostPorts"} {", ".join(used)}')
    if ports:
        found.append(f"hostPort ({'; '.join(ports)})")
    # AppArmor
    apparmor = []
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            apparmor.append(f'{key}="{value}"')
    for owner, context in [("pod", pod_context), *[(c["name"], _context(c)) for c in containers]]:
        profile = (context.get("appArmorProfile") or {}).get("type")
        if profile is not None and profile not in ("RuntimeDefault", "Localhost"):
            who = "pod" if owner == "pod" else f'container "{owner}"'
            apparmor.append(f'{who} securityContext.appArmorProfile.type="{profile}"')
    if apparmor:
        found.append(f"forbidden AppArmor profile{'s' if len(apparmor) > 1 else ''} ({', '.join(sorted(apparmor))})")
    # SELinux
    selinux = []
    for owner, context in [("pod", pod_context), *[(c["name"], _context(c)) for c in containers]]:
        options = context.get("seLinuxOptions") or {}
        bad = []
        if options.get("type", "") not in SELINUX_TYPES:
            bad.append(f'type "{options["type"]}"')
        bad += [f'{key} "{options[key]}"' for key in ("user", "role") if options.get(key)]
        if bad:
            who = "pod" if owner == "pod" else f'container "{owner}"'
            selinux.append(f"{who} set forbidden securityContext.seLinuxOptions: {'; '.join(bad)}")
    if selinux:
        found.append(f"seLinuxOptions ({'; '.join(selinux)})")
    # /proc mount type
    unmasked = [c["name"] for c in containers if _context(c).get("procMount") not in (None, "Default")]
    if unmasked:
        found.append(f"procMount ({_names('container', unmasked)} must not set securityContext.procMount to "
                     f'"{_context(next(c for c in containers if c["name"] == unmasked[0]))["procMount"]}")')
    # Seccomp: never Unconfined
    unconfined = []
    if (pod_context.get("seccompProfile") or {}).get("type") == "Unconfined":
        unconfined.append("pod")
    names = [c["name"] for c in containers if (_context(c).get("seccompProfile") or {}).get("type") == "Unconfined"]
    if names:
        unconfined.append(_names("container", names))
    if unconfined:
        found.append(f'seccompProfile ({" and ".join(unconfined)} must not set securityContext.seccompProfile.type '
                     'to "Unconfined")')
    # Sysctls
    sysctls = [s["name"] for s in pod_context.get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]
    if sysctls:
        found.append(f"forbidden sysctls ({', '.join(sysctls)})")
    return found


def _restricted(pod: dict) -> list[str]:
    spec = pod.get("spec") or {}
    pod_context = spec.get("securityContext") or {}
    containers = _containers(spec)
    found = []
    # Volume types
    volumes = []
    for volume in spec.get("volumes") or []:
        kind = next((k for k in volume if k in _VOLUME_SOURCES), None)
        if kind is not None and kind not in RESTRICTED_VOLUMES:
            volumes.append(f'volume "{volume["name"]}" uses restricted volume type "{kind}"')
    if volumes:
        found.append(f"restricted volume types ({'; '.join(volumes)})")
    # Privilege escalation
    escalating = [c["name"] for c in containers if _context(c).get("allowPrivilegeEscalation") is not False]
    if escalating:
        found.append(f"allowPrivilegeEscalation != false ({_names('container', escalating)} must set "
                     "securityContext.allowPrivilegeEscalation=false)")
    # Running as non-root
    pod_non_root = pod_context.get("runAsNonRoot")
    explicit_root = [c["name"] for c in containers if _context(c).get("runAsNonRoot") is False]
    implicit = [c["name"] for c in containers if _context(c).get("runAsNonRoot") is None and pod_non_root is not True]
    if pod_non_root is False or explicit_root or implicit:
        parts = []
        if pod_non_root is False:
            parts.append("pod must not set securityContext.runAsNonRoot=false")
        if explicit_root:
            parts.append(f"{_names('container', explicit_root)} must not set securityContext.runAsNonRoot=false")
        if implicit and pod_non_root is None:
            parts.append(f"pod or {_names('container', implicit)} must set securityContext.runAsNonRoot=true")
        if parts:
            found.append(f"runAsNonRoot != true ({'; '.join(parts)})")
    # runAsUser != 0
    root = []
    if pod_context.get("runAsUser") == 0:
        root.append("pod must not set runAsUser=0")
    root_containers = [c["name"] for c in containers if _context(c).get("runAsUser") == 0]
    if root_containers:
        root.append(f"{_names('container', root_containers)} must not set runAsUser=0")
    if root:
        found.append(f"runAsUser=0 ({'; '.join(root)})")
    # Seccomp: RuntimeDefault or Localhost, set on the pod or on every container
    pod_profile = (pod_context.get("seccompProfile") or {}).get("type")
    unset = [c["name"] for c in containers if (_context(c).get("seccompProfile") or {}).get("type") is None
             and pod_profile not in ("RuntimeDefault", "Localhost")]
    if unset and pod_profile is None:
        found.append(f"seccompProfile (pod or {_names('container', unset)} must set securityContext.seccompProfile.type "
                     'to "RuntimeDefault" or "Localhost")')
    # Capabilities: drop ALL, add at most NET_BIND_SERVICE
    capabilities = []
    not_dropped = [c["name"] for c in containers if "ALL" not in ((_context(c).get("capabilities") or {}).get("drop") or [])]
    if not_dropped:
        capabilities.append(f'{_names("container", not_dropped)} must set securityContext.capabilities.drop=["ALL"]')
    for c in containers:
        added = [a for a in (_context(c).get("capabilities") or {}).get("add") or [] if a != "NET_BIND_SERVICE"]
        if added:
            capabilities.append(f'container "{c["name"]}" must not include '
                                f'{", ".join(chr(34) + a + chr(34) for a in added)} in securityContext.capabilities.add')
    if capabilities:
        found.append(f"unrestricted capabilities ({'; '.join(capabilities)})")
    return found


def violations(pod: dict, level: str) -> list[str]:
    """What ``pod`` violates of the standard's ``level`` (``privileged`` allows everything)."""
    if level == "privileged":
        return []
    found = _baseline(pod)
    if level == "restricted":
        found += _restricted(pod)
    return found


def check(namespace: dict | None, pod: dict, name: str) -> None:
    """Refuse (:class:`~.store.ApiError` 403) a pod that violates its namespace's enforced level."""
    from coiled_k8s.offline.store import ApiError

    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(LABEL_ENFORCE, "privileged")
    if level not in LEVELS:
        level = "restricted"  # an unknown level is treated as the most restrictive, as the server does
    found = violations(pod, level)
    if found:
        version = labels.get(LABEL_ENFORCE_VERSION, "latest")
        raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: violates PodSecurity "{level}:{version}": '
                       + ", ".join(found), {"name": name, "kind": "pods"})
