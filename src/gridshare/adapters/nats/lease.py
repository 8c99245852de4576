"""Which controller runs a site: a lease in the JetStream key-value bucket ``gridshare_sites``.

Key = site id, value = ``<controller id> <process nonce>``. The bucket's TTL expires an
entry ``ttl_s`` after its last write, so a lease lives only while its holder renews it
(every ``ttl_s / 3``). Taking a lease is ``create`` (succeeds only when the key is absent:
expired or released); renewing is ``update`` with the revision we last wrote (a
compare-and-set: fails if anyone else wrote since). A controller runs a site only while it
holds the lease, and gives the site up (``lost`` is set) when a renewal is refused or when
it could not renew for ``ttl_s`` (NATS away: it can no longer know that nobody took over).

The nonce makes a restarted controller with the same ``--controller-id`` wait for its
predecessor's lease to expire like anyone else: two processes with one id never both run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time

import nats.js.errors
from nats.js.kv import KeyValue

from gridshare.adapters.nats.bus import NatsBus
from gridshare.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BUCKET = "gridshare_sites"
DEFAULT_TTL_S = 5.0


def default_controller_id() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


class SiteLease:
    def __init__(self, bus: NatsBus, site: str, controller_id: str, *,
                 ttl_s: float = DEFAULT_TTL_S) -> None:
        self.bus = bus
        self.site = site
        self.controller_id = controller_id
        self.ttl_s = ttl_s
        self.value = f"{controller_id} {secrets.token_hex(4)}".encode()
        self.lost = asyncio.Event()
        self._kv: KeyValue | None = None
        self._revision: int | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.held_since: float | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None and not self.lost.is_set()

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            js = await self.bus.connect()
            try:
                self._kv = await js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                with contextlib.suppress(nats.js.errors.BadRequestError):
                    await js.create_key_value(bucket=BUCKET, ttl=self.ttl_s, history=1)
                self._kv = await js.key_value(BUCKET)
        return self._kv

    async def holder(self) -> str | None:
        """The controller id holding the site now (None: nobody)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(self.site)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value.decode().split(" ")[0] if entry.value else None

    async def try_acquire(self) -> bool:
        kv = await self._bucket()
        try:
            self._revision = await kv.create(self.site, self.value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self.lost.clear()
        self.held_since = time.monotonic()
        self._renewer = asyncio.create_task(self._renew(), name=f"gridshare-lease-{self.site}")
        log.info("lease: controller %s holds site %s", self.controller_id, self.site)
        return True

    async def acquire(self) -> None:
        """Wait until this controller holds the site (polls every ``ttl_s / 5``)."""
        waited = failing = False
        while True:
            try:
                if await self.try_acquire():
                    return
                failing = False
            except Exception as exc:
                if not failing:  # once per streak, not every poll while NATS is away
                    log.warning("lease: site %s: %r; retrying", self.site, exc)
                failing = True
            if not waited:
                waited = True
                log.info("lease: site %s is held by %s; controller %s waits", self.site,
                         await self._safe_holder(), self.controller_id)
            await asyncio.sleep(self.ttl_s / 5)

    async def _safe_holder(self) -> str | None:
        try:
            return await self.holder()
        except Exception:
            return None

    async def _renew(self) -> None:
        kv = await self._bucket()
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                assert self._revision is not None
                self._revision = await kv.update(self.site, self.value, last=self._revision)
                last_ok = time.monotonic()
                continue
            except nats.js.errors.KeyWrongLastSequenceError:
                log.error("lease: controller %s lost site %s (taken over)", self.controller_id,
                          self.site)
            except Exception as exc:
                if time.monotonic() - last_ok < self.ttl_s * 0.9:
                    log.warning("lease: renewing site %s failed: %r", self.site, exc)
                    continue
                log.error("lease: controller %s could not renew site %s for %.1f s; giving "
                          "it up", self.controller_id, self.site, self.ttl_s)
            self.lost.set()
            return

    async def release(self) -> None:
        """Give the site up now (a clean stop): the next controller need not wait."""
        if self._renewer is not None:
            await cancel_and_wait([self._renewer], swallow_errors=True)
            self._renewer = None
        if self._revision is not None and not self.lost.is_set():
            with contextlib.suppress(Exception):
                kv = await self._bucket()
                await kv.delete(self.site, last=self._revision)
        self._revision = None
