-- Android phones through Firebase Cloud Messaging (HTTP v1): an FCM registration token
-- is stored like an APNs token (in `token`, no keys). Only Web Push needs p256dh/auth.
ALTER TABLE devices DROP CONSTRAINT devices_kind_check;
ALTER TABLE devices ADD CONSTRAINT devices_kind_check
    CHECK (kind IN ('apns', 'fcm', 'webpush'));
ALTER TABLE devices DROP CONSTRAINT devices_check;
ALTER TABLE devices ADD CONSTRAINT devices_webpush_keys
    CHECK (kind <> 'webpush' OR (p256dh IS NOT NULL AND auth IS NOT NULL));
