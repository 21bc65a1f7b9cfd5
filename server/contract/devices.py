"""Push devices: an APNs token, an FCM registration token or a Web Push subscription
(the body of POST /v1/devices, one of three shapes told apart by `kind`), and the
devices a user reads back."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal, NotRequired

from pydantic import AfterValidator, ConfigDict, Field, RootModel, StringConstraints, with_config
from typing_extensions import TypedDict

from core.endpoints import MAX_ENDPOINT_LENGTH
from server.contract.fields import Body, Id, Refusal, Timestamp, refuse

P256_POINT_BYTES = 65  # uncompressed: 0x04 || X || Y
AUTH_SECRET_BYTES = 16
KEY_MAX_CHARS = 200


def _base64url(value: str, size: int) -> str:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise refuse("invalid_field", "{field} is not base64url") from None
    if len(raw) != size:
        raise refuse("invalid_field", f"{{field}} must decode to {size} bytes")
    if size == P256_POINT_BYTES and raw[0] != 4:
        raise refuse("invalid_field", "{field} must be an uncompressed P-256 point")
    return value.rstrip("=")


def _point(value: str) -> str:
    return _base64url(value, P256_POINT_BYTES)


def _secret(value: str) -> str:
    return _base64url(value, AUTH_SECRET_BYTES)


KeyText = StringConstraints(min_length=1, max_length=KEY_MAX_CHARS)


class Keys(Body):
    """PushSubscription.toJSON().keys; anything else in it is ignored (browsers may add)."""

    model_config = ConfigDict(extra="ignore")

    p256dh: Annotated[str, KeyText, AfterValidator(_point)] = Field(
        description="base64url, 65 bytes"
    )
    auth: Annotated[str, KeyText, AfterValidator(_secret)] = Field(
        description="base64url, 16 bytes"
    )


class Subscription(Body):
    endpoint: Annotated[
        str, StringConstraints(max_length=MAX_ENDPOINT_LENGTH), Refusal("endpoint_refused")
    ] = Field(description="https, on a public address (checked again when sending).")
    # Named for any bad shape, missing included (as clients have always been told).
    keys: Annotated[Keys, Refusal(missing="invalid_field")]
    expirationTime: float | None = None


class ApnsDevice(Body):
    kind: Literal["apns"]
    token: Annotated[
        str,
        StringConstraints(min_length=64, max_length=200, pattern="^[0-9A-Fa-f]+$"),
        AfterValidator(str.lower),
        Refusal(message="an APNs device token is 64-200 hexadecimal digits"),
    ]


class FcmDevice(Body):
    kind: Literal["fcm"]
    # As push/providers/fcm.py checks it again before sending: opaque, ~150-200 now;
    # case-sensitive, stored exactly as given.
    token: Annotated[
        str,
        StringConstraints(min_length=32, max_length=1024, pattern="^[A-Za-z0-9_:\\-]+$"),
        Refusal(message="an FCM registration token is 32-1024 of A-Z a-z 0-9 _ : -"),
    ] = Field(description="What FirebaseMessaging.getToken() gives the app.")


class WebPushDevice(Body):
    kind: Literal["webpush"]
    subscription: Subscription


AnyDevice = Annotated[ApnsDevice | FcmDevice | WebPushDevice, Field(discriminator="kind")]


class NewDevice(RootModel[AnyDevice]):
    """POST /v1/devices. A token or endpoint registered again moves to the caller and is
    enabled again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "apns", "token": "ab" * 32},
                {"kind": "fcm", "token": "cXnC4bQ7Tk2:APA91bH" + "x1_-" * 36},
            ]
        }
    )


@with_config(ConfigDict(extra="forbid"))
class Device(TypedDict):
    id: Id
    kind: Literal["apns", "fcm", "webpush"]
    enabled: bool
    disabled_reason: Annotated[
        str | None,
        Field(
            description="Why pushes stopped, e.g. `apns:Unregistered`, `fcm:UNREGISTERED`, "
            "`webpush:http_410`."
        ),
    ]
    created_at: Timestamp
    endpoint: NotRequired[Annotated[str, Field(description="Web Push only.")]]
    token_suffix: NotRequired[
        Annotated[str, Field(description="APNs and FCM only: the token's last 8 characters.")]
    ]


@with_config(ConfigDict(extra="forbid"))
class DeviceRegistered(TypedDict):
    device: Device


@with_config(ConfigDict(extra="forbid"))
class DeviceList(TypedDict):
    devices: list[Device]


@with_config(ConfigDict(extra="forbid"))
class VapidKey(TypedDict):
    public_key: Annotated[
        str,
        Field(
            description="base64url of the uncompressed P-256 point: `applicationServerKey` "
            "for `pushManager.subscribe()`."
        ),
    ]
