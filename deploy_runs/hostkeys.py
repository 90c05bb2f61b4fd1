"""Trust on first use: a server whose block allows an unknown host key gets the key it offers
the first time pinned in its block, so every later connection verifies against it."""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate

from blocks import SSHServer

logger = logging.getLogger("deploy_runs.hostkeys")


def pin_first_seen_key(server: SSHServer, key_line: str) -> str:
    """Pin `key_line` as `server`'s host key: in this run at once (a reconnect verifies it),
    and in the server's saved block (only the `host_key` field is written, merged into what
    is stored). Returns what to say in the step's log."""
    server.host_key = key_line
    # a block loaded from the API (also one nested in an Application) knows its document
    document = getattr(server, "_block_document_id", None)
    if document is None:
        return ("the key is pinned for this run only: the server block is not saved in "
                "Prefect (save it, or set its host_key)")
    try:
        with get_client(sync_client=True) as client:
            client.update_block_document(document, BlockDocumentUpdate(
                data={"host_key": key_line}, merge_existing_data=True))
    except Exception as exc:  # the run goes on with the key pinned for itself
        logger.warning("could not save the pinned host key: %s", exc)
        return f"the key is pinned for this run only: saving it in the server block failed ({exc})"
    name = getattr(server, "_block_document_name", None) or str(document)
    return f"pinned it as host_key of server block {name}: any other key is refused from now on"
