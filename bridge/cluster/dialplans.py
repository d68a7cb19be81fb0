"""One dialplan version everywhere: the files on a shared volume, the numbering in Redis.

Every instance watches the same dialplan files (a shared volume, or one ConfigMap) with its own
`DialplanStore` watcher, as a single instance does. What Redis adds is the order and the number:
after each successful load the instance publishes the content hash of what it loaded
(`Cluster.publish_dialplan`); new content gets the next cluster version (one Lua script: atomic),
content the cluster already numbered keeps its number, and the announcement goes to every
instance. An instance that hears of a version whose content it has not loaded yet reloads its
files now (the volume may be a little behind: the regular watcher catches up later) and adopts the
number once its content hash matches. So one version number means the same plan on every
instance, versions only go up, and each call keeps the snapshot it started with (its own version).

Redis down: each instance goes on numbering its own reloads locally; on recovery it publishes its
current content again (never going below its local version).
"""

from __future__ import annotations

import asyncio
import logging

from bridge.cluster.shell import Cluster
from bridge.dialplan.store import DialplanStore

log = logging.getLogger(__name__)


class DialplanSync:
    def __init__(self, cluster: Cluster, store: DialplanStore) -> None:
        self.cluster = cluster
        self.store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self.cluster_version: int | None = None  # the last version number the cluster announced

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.on_reload.append(self._reloaded)  # runs in the watcher's thread
        self.cluster.on_dialplan = self.announced
        self.cluster.on_recovered.append(self.publish)
        await self.publish()

    def _reloaded(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.publish()))

    async def publish(self) -> None:
        """Number what this instance serves now (a new number for content the cluster has not seen)."""
        async with self._lock:
            content_hash = self.store.content_hash
            version = await self.cluster.publish_dialplan(content_hash, self.store.version)
            if version is not None and content_hash == self.store.content_hash:
                self.store.adopt_version(version)
                self.cluster_version = max(version, self.cluster_version or 0)

    async def announced(self, version: int, content_hash: str) -> None:
        """Another instance (or this one) published `version` with `content_hash`."""
        self.cluster_version = max(version, self.cluster_version or 0)
        if content_hash == self.store.content_hash:
            self.store.adopt_version(version)
            return
        # New content elsewhere: load the shared files now instead of waiting for the next poll.
        errors = await asyncio.to_thread(self.store.reload)
        if errors:
            log.error("dialplan v%d announced by the cluster does not load here: %s", version, errors[0])
        elif self.store.content_hash != content_hash:
            log.warning(
                "dialplan v%d announced by the cluster: the files here differ (is the volume shared?)",
                version,
            )
