"""The documented workflow with Azure's official Python SDKs against `dbx-identity-operator sandbox`:
workspace -> its managed resource group -> `dbmanagedidentity` -> a role assignment (create, list
with $filter, 409 for a second name on the same principal/role/scope, delete), the workspace's
linked Access Connector, and ARM's answer to an api-version it does not serve.

Usage: python sdk_workflow.py SANDBOX_DIR   (the directory `sandbox --dir` wrote its files to)

Authenticates as the operator through the sandbox's managed-identity endpoint (azure.env), with
azure-identity's ManagedIdentityCredential, exactly as on an App Service / Functions host. Each
step prints one line; any deviation raises and exits non-zero."""

import json
import os
import sys
import time
import uuid
from pathlib import Path

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.identity import ManagedIdentityCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.databricks import AzureDatabricksManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient


def parse_id(resource_id: str) -> dict:
    parts = resource_id.strip("/").split("/")
    return {parts[i].lower(): parts[i + 1] for i in range(0, len(parts) - 1, 2)}


def main(sandbox: Path) -> None:
    env = dict(line.split("=", 1) for line in (sandbox / "azure.env").read_text().splitlines() if "=" in line)
    estate = json.loads((sandbox / "estate.json").read_text())
    # What an App Service host sets; azure-core's transport trusts the sandbox's CA through it.
    os.environ["IDENTITY_ENDPOINT"] = env["IDENTITY_ENDPOINT"]
    os.environ["IDENTITY_HEADER"] = env["IDENTITY_HEADER"]
    os.environ["REQUESTS_CA_BUNDLE"] = env["DBX_AZURE_CA_FILE"]
    arm, sub = env["DBX_ARM_ENDPOINT"], env["AZURE_SUBSCRIPTION_ID"]
    # A non-public cloud: the token's audience is the ARM endpoint, as for sovereign clouds.
    cloud = {"base_url": arm, "credential_scopes": [f"{arm}/.default"]}
    credential = ManagedIdentityCredential()

    workspace_id = estate["workspaces"][0]["id"]
    ws = parse_id(workspace_id)
    databricks = AzureDatabricksManagementClient(credential, sub, **cloud)
    workspace = databricks.workspaces.get(ws["resourcegroups"], ws["workspaces"])
    managed_rg = parse_id(workspace.managed_resource_group_id)["resourcegroups"]
    print(f"workspace {workspace.name}: managed resource group {managed_rg}")
    assert workspace.access_connector is not None, "the workspace's linked Access Connector is missing"
    connector = parse_id(workspace.access_connector.id)
    ac = databricks.access_connectors.get(connector["resourcegroups"], connector["accessconnectors"])
    print(f"linked access connector {ac.name}: system-assigned principal {ac.identity.principal_id}")

    msi = ManagedServiceIdentityClient(credential, sub, **cloud)
    identity = msi.user_assigned_identities.get(managed_rg, "dbmanagedidentity")
    principal = identity.principal_id
    assert principal == estate["workspaces"][0]["managedIdentityPrincipalId"], principal
    print(f"dbmanagedidentity: principal {principal} (api-version {msi._config.api_version})")

    auth = AuthorizationManagementClient(credential, sub, **cloud)
    scope = estate["scopes"]["storageAccount"]
    role = next(iter(auth.role_definitions.list(scope, filter="roleName eq 'Storage Blob Data Reader'")))
    name = str(uuid.uuid4())
    created = auth.role_assignments.create(
        scope, name,
        RoleAssignmentCreateParameters(role_definition_id=role.id, principal_id=principal, principal_type="ServicePrincipal"),
    )
    assert created.name == name and created.principal_id == principal, created
    print(f"created role assignment {name}: {role.role_name} at {scope}")

    # New assignments reach list results after a moment (as in Azure); $filter by principal.
    deadline = time.monotonic() + 15
    while True:
        listed = [a.name for a in auth.role_assignments.list_for_scope(scope, filter=f"principalId eq '{principal}'")]
        if name in listed:
            break
        assert time.monotonic() < deadline, f"not listed with $filter: {listed}"
        time.sleep(0.5)
    print(f"listed with $filter=principalId eq '{principal}': {len(listed)} assignment(s)")

    try:
        auth.role_assignments.create(
            scope, str(uuid.uuid4()),
            RoleAssignmentCreateParameters(role_definition_id=role.id, principal_id=principal, principal_type="ServicePrincipal"),
        )
        raise AssertionError("a second assignment for the same principal, role and scope was accepted")
    except HttpResponseError as e:
        assert e.status_code == 409 and e.error.code == "RoleAssignmentExists", (e.status_code, e.error)
        print(f"second name for the same tuple: {e.status_code} {e.error.code}")

    deleted = auth.role_assignments.delete(scope, name)
    assert deleted is not None and deleted.name == name, deleted
    try:
        auth.role_assignments.get(scope, name)
        raise AssertionError("the deleted assignment is still there")
    except ResourceNotFoundError:
        print(f"deleted {name}; GET answers 404")

    # The SDKs refuse unknown versions themselves; a raw request through the same pipeline asks ARM.
    response = databricks.send_request(HttpRequest("GET", f"{identity.id}?api-version=2010-01-01"))
    error = response.json().get("error", {})
    assert response.status_code == 400 and error.get("code") == "InvalidApiVersionParameter", response.text()
    assert "2024-11-30" in error.get("message", ""), error
    print(f"api-version 2010-01-01: {response.status_code} {error['code']}: {error['message']}")

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    main(Path(sys.argv[1]))
    print("official Azure SDKs against the sandbox: OK")
