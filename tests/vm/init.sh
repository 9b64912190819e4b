#!/bin/busybox sh
# /init of the VM tier's initramfs: load virtio + 9p, mount the host's root read-only,
# chroot into it and run /tmp/xfer/cmd.sh, writing out.txt and a last CMD_RC=<n> line.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
ifconfig lo 127.0.0.1 up   # Ray (and anything on loopback) needs it
for m in $(cat /mods/order); do insmod /mods/$m.ko 2>/dev/null || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || { echo 9P_MOUNT_FAILED; poweroff -f; }
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/tmp; mkdir -p /host/tmp/xfer /host/dev/shm
mount -t tmpfs shm /host/dev/shm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 xfer /host/tmp/xfer
# The loose-cache view of the (read-only) host root, bound over the trees Python reads
# (/usr, the interpreter's prefixes, the checkout) at their own paths: faster, and a venv
# or a clone under /tmp shows through the tmpfs above.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostloose /loose || echo LOOSE_MOUNT_FAILED
for tree in $(sed -n 's/.*ray_numa_share=\([^ ]*\).*/\1/p' /proc/cmdline | tr ':' ' '); do
    mkdir -p "/host$tree" 2>/dev/null
    mount --bind "/loose$tree" "/host$tree" || echo "SHARE_FAILED $tree"
done
echo "GUEST_UP uptime=$(cut -d' ' -f1 /proc/uptime)"
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp /bin/sh /tmp/xfer/cmd.sh > /host/tmp/xfer/out.txt 2>&1
echo "CMD_RC=$?" >> /host/tmp/xfer/out.txt
sync; umount /host/tmp/xfer
poweroff -f
