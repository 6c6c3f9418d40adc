#!/usr/bin/python3
"""A FUSE file system that forgets, on a power cut, everything that was not fsync'ed.

Usage: powerloss_fs.py [--sync-delay-ms N] BACKING_DIR MOUNTPOINT

It mounts MOUNTPOINT as a pass-through view of BACKING_DIR. BACKING_DIR plays the disk:
what is in it survives a power cut. This process's memory plays the page cache: data
written to a file is kept here, visible to every reader of the mount, until the file is
fsync'ed or fdatasync'ed; only then is it written to BACKING_DIR. A power cut is this
process dying (the test harness SIGKILLs it, after killing the program under test):
whatever it held is gone, and a fresh mount of BACKING_DIR shows only what was synced.

What counts as durable (see docs/testing-faults.md):

- File data and file size (write, truncate, O_TRUNC, a write past the end) are durable only
  after fsync/fdatasync of that file (any descriptor of it: the file's whole unsynced state
  is written, as a kernel does for an inode). Closing a file syncs nothing.
- Names are durable at once: create, mkdir, unlink, rmdir and rename go straight to
  BACKING_DIR when they happen, and fsync of a directory is a no-op. A real file system may
  lose a rename or a create that no directory fsync covered; this layer does not model
  that, so it cannot catch a missing directory fsync. Mode, owner and times also pass
  through at once.
- Nothing is ever written to BACKING_DIR partially or out of order: a cut loses every
  unsynced write of every file, never a subset. (A real disk may keep any subset; this
  layer tests the "all of them lost" corner, the one that matters for acknowledge-after-
  durable.)
- BACKING_DIR itself is not fsync'ed: the simulated cut is this layer's, not the host's.
- With --sync-delay-ms N an fsync waits N ms before it writes (a slow SD card): other
  requests go on meanwhile, and a cut during the wait loses what that fsync would have
  saved (its caller has not been answered, so it cannot have relied on it).

Memory-mapped files (SQLite's WAL index, `-shm`): the kernel's page cache serves shared
mappings (the mount does not use direct I/O), so every process mapping the file sees the
same pages; the kernel writes dirty mapped pages back here as ordinary writes, which are
held like any other unsynced write. SQLite never fsyncs `-shm`, so a cut leaves it as it
was durably (normally empty): SQLite rebuilds the WAL index from the WAL on the next open.
POSIX and flock locks are not implemented here, so the kernel keeps them locally, which is
correct for processes on one machine.

Control: one command per line on stdin, one JSON answer per line on stdout.
  status   -> {"files": [{"path", "dirty_bytes", "size", "durable_size"}], "writes", "fsyncs", ...}
  freeze   -> the same status, taken at the moment the power goes: from then on nothing
              reaches BACKING_DIR any more. An fsync (or create, rename, unlink, mkdir,
              rmdir, chmod, …) that arrives or is still waiting then never returns, like
              I/O to a disk that lost power, so no program learns that something became
              durable after the cut. The harness then kills the programs using the mount
              and this process.
On end of stdin (the harness went away) the file system unmounts itself and exits.
The first line on stdout is {"ready": true}, once the mount is in place.
"""

import errno
import json
import os
import stat
import sys

import pyfuse3
import trio

PAGE = 4096
ZEROS = bytes(PAGE)
# Attributes and names may be cached by the kernel: every change comes through this mount.
CACHE_SECONDS = 1.0


class Node:
    """One inode: where it is in BACKING_DIR and what it holds that is not durable yet."""

    __slots__ = ("ino", "path", "fd", "opens", "pages", "size", "zero_from", "durable_size", "gone")

    def __init__(self, ino, path):
        self.ino = ino
        self.path = path
        self.fd = None  # read-write descriptor of the backing file, opened on first use
        self.opens = 0  # open handles of the mount on this inode
        self.pages = {}  # page index -> bytearray(PAGE): unsynced content of that page
        self.size = None  # logical size while it differs from the durable one (None: same)
        self.zero_from = None  # durable bytes from here on are cut off by an unsynced truncate
        self.durable_size = 0  # size of the backing file (only this process changes it)
        self.gone = False  # unlinked (or replaced by a rename) while still open

    def dirty(self):
        return bool(self.pages) or self.size is not None or self.zero_from is not None

    def logical_size(self):
        return self.durable_size if self.size is None else self.size

    def backing_fd(self):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self.durable_size = os.fstat(self.fd).st_size
        return self.fd

    def durable_page(self, index):
        """What page `index` holds durably, as seen through unsynced truncates."""
        start = index * PAGE
        limit = self.durable_size
        if self.zero_from is not None:
            limit = min(limit, self.zero_from)
        valid = min(PAGE, limit - start)
        if valid <= 0:
            return ZEROS
        data = os.pread(self.backing_fd(), valid, start)
        return data + bytes(PAGE - len(data))

    def read(self, off, size):
        end = min(off + size, self.logical_size())
        if end <= off:
            return b""
        if not self.pages and self.zero_from is None:
            data = os.pread(self.backing_fd(), end - off, off)
            return data + bytes(end - off - len(data))
        out = bytearray()
        for index in range(off // PAGE, (end - 1) // PAGE + 1):
            page = self.pages.get(index)
            if page is None:
                page = self.durable_page(index)
            lo = max(off, index * PAGE) - index * PAGE
            hi = min(end, (index + 1) * PAGE) - index * PAGE
            out += page[lo:hi]
        return bytes(out)

    def write(self, off, buf):
        end = off + len(buf)
        pos = off
        while pos < end:
            index = pos // PAGE
            lo = pos - index * PAGE
            hi = min(PAGE, end - index * PAGE)
            page = self.pages.get(index)
            if page is None:
                page = bytearray(ZEROS) if lo == 0 and hi == PAGE else bytearray(self.durable_page(index))
                self.pages[index] = page
            page[lo:hi] = buf[pos - off : pos - off + hi - lo]
            pos = index * PAGE + hi
        if end > self.logical_size():
            self.size = end

    def truncate(self, length):
        old = self.logical_size()
        if length < old:
            first_gone = (length + PAGE - 1) // PAGE
            for index in [i for i in self.pages if i >= first_gone]:
                del self.pages[index]
            tail = self.pages.get(length // PAGE)
            if tail is not None:
                cut = length - (length // PAGE) * PAGE
                tail[cut:] = bytes(PAGE - cut)
            if length < self.durable_size:
                self.zero_from = length if self.zero_from is None else min(self.zero_from, length)
        self.size = length
        if self.size == self.durable_size and self.zero_from is None:
            self.size = None

    def sync(self):
        """Makes the unsynced state durable (fsync/fdatasync). Returns bytes written."""
        if not self.dirty():
            return 0
        fd = self.backing_fd()
        length = self.logical_size()
        if self.zero_from is not None and self.zero_from < self.durable_size:
            os.ftruncate(fd, self.zero_from)
        written = 0
        for index in sorted(self.pages):
            start = index * PAGE
            n = min(PAGE, length - start)
            if n > 0:
                os.pwrite(fd, self.pages[index][:n], start)
                written += n
        if os.fstat(fd).st_size != length:
            os.ftruncate(fd, length)
        self.pages.clear()
        self.size = None
        self.zero_from = None
        self.durable_size = length
        return written

    def forget_unsynced(self):
        self.pages.clear()
        self.size = None
        self.zero_from = None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PowerLossFs(pyfuse3.Operations):
    enable_writeback_cache = False  # every write() reaches this process at once

    def __init__(self, backing, sync_delay=0.0):
        super().__init__()
        self.sync_delay = sync_delay
        self.syncing = 0  # fsyncs waiting out the delay
        self.frozen = False  # the power is gone: nothing may reach BACKING_DIR
        root = Node(pyfuse3.ROOT_INODE, os.fsencode(os.path.abspath(backing)))
        self.root = root.path
        self.nodes = {root.ino: root}
        self.by_path = {root.path: root}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.handles = {}  # file handle -> Node
        self.next_fh = 1
        self.writes = 0
        self.bytes_written = 0
        self.fsyncs = 0
        self.bytes_synced = 0

    async def powered(self):
        """Returns only while the power is on: a request that would change BACKING_DIR after
        the cut hangs (until the harness kills its caller), as I/O to a dead disk does."""
        if self.frozen:
            await trio.sleep_forever()

    # --- inodes and attributes -------------------------------------------------------------

    def node(self, ino):
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def node_for(self, path):
        n = self.by_path.get(path)
        if n is None:
            n = Node(self.next_ino, path)
            self.next_ino += 1
            self.nodes[n.ino] = n
            self.by_path[path] = n
        return n

    def child(self, parent_ino, name):
        return os.path.join(self.node(parent_ino).path, name)

    def attrs(self, n, st=None):
        if st is None:
            try:
                st = os.fstat(n.fd) if n.gone and n.fd is not None else os.lstat(n.path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.ino
        a.generation = 0
        a.entry_timeout = CACHE_SECONDS
        a.attr_timeout = CACHE_SECONDS
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = n.logical_size() if stat.S_ISREG(st.st_mode) and n.dirty() else st.st_size
        a.st_blksize = PAGE
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    async def lookup(self, parent_inode, name, ctx):
        parent = self.node(parent_inode)
        if name == b".":
            return self.attrs(parent)
        if name == b"..":
            up = os.path.dirname(parent.path) if parent.path != self.root else self.root
            return self.attrs(self.node_for(up))
        path = os.path.join(parent.path, name)
        try:
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        return self.attrs(self.node_for(path), st)

    async def getattr(self, inode, ctx):
        return self.attrs(self.node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self.node(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid or fields.update_atime or fields.update_mtime:
            await self.powered()
        target = n.fd if n.gone else n.path
        try:
            if fields.update_mode:
                os.chmod(target, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(
                    target,
                    attr.st_uid if fields.update_uid else -1,
                    attr.st_gid if fields.update_gid else -1,
                )
            if fields.update_atime or fields.update_mtime:
                st = os.stat(target)
                os.utime(
                    target,
                    ns=(
                        attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                        attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                    ),
                )
            if fields.update_size:
                n.backing_fd()
                n.truncate(attr.st_size)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        return self.attrs(n)

    async def forget(self, inode_list):
        # Nodes are kept while mounted: an inode the kernel forgot may still hold unsynced
        # data, and the few files a test uses cost nothing.
        pass

    async def statfs(self, ctx):
        s = os.statvfs(self.root)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(s, field))
        return out

    # --- names: durable at once --------------------------------------------------------------

    async def mkdir(self, parent_inode, name, mode, ctx):
        await self.powered()
        path = self.child(parent_inode, name)
        try:
            os.mkdir(path, stat.S_IMODE(mode))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        return self.attrs(self.node_for(path))

    def drop_name(self, path):
        """`path` no longer names its inode: forget the inode unless it is still open."""
        n = self.by_path.pop(path, None)
        if n is None:
            return
        n.forget_unsynced()
        if n.opens > 0:
            n.gone = True
        else:
            n.close()
            del self.nodes[n.ino]

    async def unlink(self, parent_inode, name, ctx):
        await self.powered()
        path = self.child(parent_inode, name)
        try:
            os.unlink(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        self.drop_name(path)

    async def rmdir(self, parent_inode, name, ctx):
        await self.powered()
        path = self.child(parent_inode, name)
        try:
            os.rmdir(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        self.drop_name(path)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.powered()
        old = self.child(parent_inode_old, name_old)
        new = self.child(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(new):
            raise pyfuse3.FUSEError(errno.EEXIST)
        try:
            os.rename(old, new)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        if old == new:
            return
        self.drop_name(new)
        prefix = old + b"/"
        for path in [p for p in self.by_path if p == old or p.startswith(prefix)]:
            n = self.by_path.pop(path)
            n.path = new + path[len(old) :]
            self.by_path[n.path] = n

    # --- directories ---------------------------------------------------------------------------

    async def opendir(self, inode, ctx):
        self.node(inode)
        return inode

    async def readdir(self, fh, start_id, token):
        parent = self.node(fh)
        try:
            names = sorted(os.listdir(parent.path))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        for i, name in enumerate(names[start_id:], start_id):
            path = os.path.join(parent.path, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, name, self.attrs(self.node_for(path), st), i + 1):
                return

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        pass  # names are durable at once (see the module docs)

    # --- files ---------------------------------------------------------------------------------

    def new_handle(self, n):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = n
        n.opens += 1
        # keep_cache: the kernel's cached pages stay right, every change comes through here.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def open(self, inode, flags, ctx):
        n = self.node(inode)
        try:
            n.backing_fd()
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        if flags & os.O_TRUNC:
            n.truncate(0)
        return self.new_handle(n)

    async def create(self, parent_inode, name, mode, flags, ctx):
        await self.powered()
        path = self.child(parent_inode, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (flags & os.O_EXCL), stat.S_IMODE(mode))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        n = self.node_for(path)
        if n.fd is None:
            n.fd = fd
            n.durable_size = os.fstat(fd).st_size
        else:
            os.close(fd)
        if flags & os.O_TRUNC:
            n.truncate(0)
        return self.new_handle(n), self.attrs(n)

    async def read(self, fh, off, size):
        try:
            return self.handles[fh].read(off, size)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None

    async def write(self, fh, off, buf):
        try:
            self.handles[fh].write(off, buf)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        self.writes += 1
        self.bytes_written += len(buf)
        return len(buf)

    async def fsync(self, fh, datasync):
        if self.sync_delay > 0:
            self.syncing += 1
            try:
                await trio.sleep(self.sync_delay)
            finally:
                self.syncing -= 1
        await self.powered()
        try:
            self.bytes_synced += self.handles[fh].sync()
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        self.fsyncs += 1

    async def flush(self, fh):
        pass  # close() makes nothing durable

    async def release(self, fh):
        n = self.handles.pop(fh)
        n.opens -= 1
        if n.gone and n.opens == 0:
            n.close()
            self.nodes.pop(n.ino, None)

    # --- control -------------------------------------------------------------------------------

    def status(self):
        files = []
        for n in self.nodes.values():
            if n.dirty():
                files.append(
                    {
                        "path": os.fsdecode(os.path.relpath(n.path, self.root)),
                        "dirty_bytes": len(n.pages) * PAGE,
                        "size": n.logical_size(),
                        "durable_size": n.durable_size
                        if n.zero_from is None
                        else min(n.durable_size, n.zero_from),
                    }
                )
        files.sort(key=lambda f: f["path"])
        return {
            "files": files,
            "writes": self.writes,
            "bytes_written": self.bytes_written,
            "fsyncs": self.fsyncs,
            "fsyncs_in_flight": self.syncing,
            "bytes_synced": self.bytes_synced,
        }


async def control(fs):
    """Answers commands on stdin; unmounts on end of input."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    pending = b""
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command = line.strip().decode()
            if command == "status":
                answer = fs.status()
            elif command == "freeze":
                fs.frozen = True
                answer = fs.status()
            else:
                answer = {"error": f"unknown command {command!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    pyfuse3.terminate()


async def serve(fs):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control, fs)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main():
    args = sys.argv[1:]
    sync_delay = 0.0
    if len(args) == 4 and args[0] == "--sync-delay-ms":
        sync_delay = int(args[1]) / 1000
        args = args[2:]
    if len(args) != 2:
        sys.exit(__doc__)
    backing, mountpoint = args
    fs = PowerLossFs(backing, sync_delay)
    options = set(pyfuse3.default_options)
    options.add("fsname=powerloss")
    options.add("subtype=powerloss")
    pyfuse3.init(fs, mountpoint, options)
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    try:
        trio.run(serve, fs)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
