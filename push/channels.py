"""Binds a job and a device to a provider's message: the only place that knows both what
a push says (push/payloads.py) and how each provider wants it (push/providers/)."""

from __future__ import annotations

import time

from core.events import PushJob
from push.dispatcher import Channel, Device
from push.payloads import FEED_COLLAPSE_ID, apns_payload, fcm_payload, webpush_payload
from push.providers import Outcome
from push.providers.apns import ApnsPush, ApnsSender
from push.providers.fcm import FcmMessage, FcmSender
from push.providers.webpush import WebPushMessage, WebPushSender


def apns_channel(sender: ApnsSender) -> Channel:
    async def send(device: Device, job: PushJob, ttl: int) -> Outcome:
        push_type, payload = apns_payload(job)
        return await sender.send(
            ApnsPush(
                token=device.token,
                push_type=push_type,
                payload=payload,
                collapse_id=FEED_COLLAPSE_ID if job.kind == "feed" else None,
                expiration=int(time.time()) + ttl,
            )
        )

    return send


def fcm_channel(sender: FcmSender) -> Channel:
    async def send(device: Device, job: PushJob, ttl: int) -> Outcome:
        data, notification = fcm_payload(job)
        feed = job.kind == "feed"
        return await sender.send(
            FcmMessage(
                token=device.token,
                data=data,
                ttl=ttl,
                # Normal priority may wait for the phone's next maintenance window (Doze),
                # fine for "new posts"; an alert is worth waking it for.
                priority="NORMAL" if feed else "HIGH",
                notification=notification,
                collapse_key=FEED_COLLAPSE_ID if feed else None,
            )
        )

    return send


def webpush_channel(sender: WebPushSender) -> Channel:
    async def send(device: Device, job: PushJob, ttl: int) -> Outcome:
        assert device.p256dh is not None and device.auth is not None  # schema CHECK
        feed = job.kind == "feed"
        return await sender.send(
            WebPushMessage(
                endpoint=device.token,
                p256dh=device.p256dh,
                auth=device.auth,
                data=webpush_payload(job),
                ttl=ttl,
                # A feed push can wait for the device's next wake-up; an alert should not.
                urgency="low" if feed else "high",
                topic=FEED_COLLAPSE_ID if feed else None,
            )
        )

    return send
