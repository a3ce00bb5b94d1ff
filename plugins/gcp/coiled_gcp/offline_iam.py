"""IAM as the offline stand-in enforces it for service accounts (test code, like
:mod:`coiled_gcp.offline`).

A request made with a service account's token (what an instance's metadata server hands its
machine) is allowed only if a binding grants the account the permission the method needs, on
the project (the project's policy, ``projects/P`` in the stand-in's policies) or on the single
resource the method acts on: an instance's policy for Compute Engine instance methods, a secret's
for Secret Manager, the bucket's for Cloud Storage. A binding's role is a custom role of the
project (its ``includedPermissions``) or one of :data:`PREDEFINED_ROLES`; a binding's condition is
evaluated on the resource's name (:func:`condition_holds`). Anything else is refused with 403 in
the shape each service answers (:func:`denial`).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from coiled_gcp.offline_api import ApiError, Route

ALL = "*"
#: Predefined roles the stand-in knows: Cloud Storage's object roles (as Google's roles reference
#: lists their storage and project permissions) and the basic owner/editor roles (everything).
PREDEFINED_ROLES: dict[str, frozenset[str]] = {
    "roles/storage.objectViewer": frozenset(
        {"storage.objects.get", "storage.objects.list", "storage.folders.get", "storage.folders.list", "storage.managedFolders.get",
         "storage.managedFolders.list", "resourcemanager.projects.get"}
    ),
    "roles/storage.objectUser": frozenset(
        {"storage.objects.get", "storage.objects.list", "storage.objects.create", "storage.objects.delete", "storage.objects.update",
         "storage.objects.restore", "storage.objects.getIamPolicy", "storage.multipartUploads.create", "storage.multipartUploads.abort",
         "storage.multipartUploads.list", "storage.multipartUploads.listParts", "storage.managedFolders.create",
         "storage.managedFolders.delete", "storage.managedFolders.get", "storage.managedFolders.list", "resourcemanager.projects.get"}
    ),
    "roles/storage.objectCreator": frozenset({"storage.objects.create", "storage.multipartUploads.create", "storage.multipartUploads.abort"}),
    "roles/owner": frozenset({ALL}),
    "roles/editor": frozenset({ALL}),
}
#: Method verbs whose permission has another verb.
_VERBS = {"insert": "create", "bulkInsert": "create", "aggregatedList": "list", "wait": "get", "patch": "update"}


@dataclass
class Need:
    """What a request needs: ``permissions`` on ``resource`` (the name conditions test), through the
    project's policy or the resource's own (``policy``, a key of the stand-in's policies)."""

    permissions: list[str]
    resource: str
    policy: str | None
    kind: str  # "instance", "secret", "object", "bucket" or "project": how a refusal reads


def permission(route: Route) -> str:
    """The permission a method needs: ``compute.instances.delete``, ``secretmanager.versions.access``,
    ``storage.objects.create`` (for ``storage.objects.insert``)..."""
    service, *path = route.id.split(".")
    if path[0] == "projects" and len(path) > 2:
        path = path[1:]  # secretmanager.projects.secrets.get, iam.projects.roles.create
    kind, verb = path[-2], path[-1]
    if verb == "addVersion":
        kind, verb = "versions", "add"
    service = {"cloudresourcemanager": "resourcemanager"}.get(service, service)
    return f"{service}.{kind}.{_VERBS.get(verb, verb)}"


def need(route: Route, project: str, query: dict[str, str], exists: Any) -> Need:
    """What ``route`` needs; ``exists(bucket, name)`` says whether an object is there (writing over
    one also needs ``storage.objects.delete``)."""
    params = {k: urllib.parse.unquote(v) for k, v in route.params.items()}
    perm = permission(route)
    if route.service == "compute":
        instance = params.get("instance") or (params.get("resource") if route.id.startswith("compute.instances.") else None)
        if instance and "zone" in params:
            zone = params["zone"]
            return Need([perm], f"projects/{project}/zones/{zone}/instances/{instance}", f"instances/{zone}/{instance}", "instance")
        return Need([perm], f"projects/{project}", None, "project")
    if route.service == "secretmanager" and "secretsId" in params:
        name = f"projects/{project}/secrets/{params['secretsId']}"
        if "versionsId" in params:
            name += f"/versions/{params['versionsId']}"
        return Need([perm], name, f"secrets/{params['secretsId']}", "secret")
    if route.service == "storage" and "bucket" in params:
        bucket = params["bucket"]
        obj = params.get("object") or (query.get("name") if route.id == "storage.objects.insert" else None)
        if obj is not None and route.id.startswith("storage.objects."):
            perms = [perm] + (["storage.objects.delete"] if route.id == "storage.objects.insert" and exists(bucket, obj) else [])
            return Need(perms, f"projects/_/buckets/{bucket}/objects/{obj}", f"buckets/{bucket}", "object")
        return Need([perm], f"projects/_/buckets/{bucket}", f"buckets/{bucket}", "bucket")
    return Need([perm], f"projects/{project}", None, "project")


def role_permissions(role: str, custom_roles: dict[str, dict]) -> frozenset[str]:
    if role in custom_roles:
        return frozenset(custom_roles[role].get("includedPermissions", ()))
    return PREDEFINED_ROLES.get(role, frozenset())


_STRING = r'"((?:[^"\\]|\\.)*)"'
_STARTS_WITH = re.compile(rf"resource\.name\.startsWith\({_STRING}\)")
_EXTRACT = re.compile(rf"resource\.name\.extract\({_STRING}\)\s*!=\s*\"\"")


class UnknownCondition(Exception):
    """A condition the stand-in cannot evaluate: a gap of the stand-in, never a grant."""


def _extract(name: str, template: str) -> str:
    """CEL's ``extract`` on a resource name: the text between the template's part before its
    ``{placeholder}`` and the first occurrence of the part after it; "" if either is missing."""
    m = re.fullmatch(r"([^{}]*)\{[^{}]+\}([^{}]*)", template)
    if not m:
        raise UnknownCondition(f"extract template {template!r}")
    before, after = m.groups()
    start = name.find(before)
    if start < 0:
        return ""
    start += len(before)
    if not after:
        return name[start:]
    end = name.find(after, start)
    return name[start:end] if end >= 0 else ""


def condition_holds(expression: str, resource: str) -> bool:
    """Evaluate the condition forms the backend writes, joined with ``||``:
    ``resource.name.startsWith("...")`` and ``resource.name.extract("...{x}...") != ""``."""
    terms = re.split(r"\s*\|\|\s*(?=resource\.)", expression.strip())
    result = False
    for term in terms:
        term = term.strip()
        if m := _STARTS_WITH.fullmatch(term):
            result = result or resource.startswith(m.group(1))
        elif m := _EXTRACT.fullmatch(term):
            result = result or _extract(resource, m.group(1)) != ""
        else:
            raise UnknownCondition(f"condition term {term!r}")
    return result


def allowed(member: str, perm: str, resource: str, policies: list[dict], custom_roles: dict[str, dict]) -> bool:
    """Whether any binding of ``policies`` grants ``member`` ``perm`` on ``resource``."""
    for policy in policies:
        for binding in policy.get("bindings", []):
            if member not in binding.get("members", []):
                continue
            granted = role_permissions(binding.get("role", ""), custom_roles)
            if perm not in granted and ALL not in granted:
                continue
            condition = binding.get("condition")
            if condition and not condition_holds(condition.get("expression", ""), resource):
                continue
            return True
    return False


def denial(email: str, perm: str, what: Need) -> ApiError:
    """The 403 the service answers when ``email`` lacks ``perm``."""
    if what.kind in ("object", "bucket"):
        kind = "object" if what.kind == "object" else "bucket"
        message = f"{email} does not have {perm} access to the Google Cloud Storage {kind}. Permission '{perm}' denied on resource (or it may not exist)."
    elif perm.startswith("compute."):
        message = f"Required '{perm}' permission for '{what.resource}'"
    else:
        message = f"Permission '{perm}' denied on resource '{what.resource}' (or it may not exist)."
    return ApiError(403, "forbidden", message, status_name="PERMISSION_DENIED")
