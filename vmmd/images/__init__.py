"""Guest images: the guest agent's build, the initramfs, guest kernels (docs/guest.md)."""
