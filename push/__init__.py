"""Push workers: APNs and Web Push notifications for offline users."""
