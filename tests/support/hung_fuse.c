/* A FUSE filesystem with one file, `file`, for the hung-filesystem tests
 * (issue 20 item 2, ECP-0136). The test SIGSTOPs this server: from then on
 * every request to the filesystem (stat, open, read) blocks, as with a dead
 * NFS or sshfs server, while descriptors opened earlier stay open.
 *
 * Usage: hung_fuse MOUNTPOINT  (runs in the foreground, single-threaded)
 */
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fuse.h>
#include <string.h>
#include <sys/stat.h>

static const char content[] = "stand-in file\n";

static int getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, "/file") == 0) {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = sizeof content - 1;
        return 0;
    }
    return -ENOENT;
}

static int readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                   struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset;
    (void)fi;
    (void)flags;
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, "file", NULL, 0, 0);
    return 0;
}

static int open_file(const char *path, struct fuse_file_info *fi) {
    (void)fi;
    return strcmp(path, "/file") == 0 ? 0 : -ENOENT;
}

static int read_file(const char *path, char *buf, size_t size, off_t offset,
                     struct fuse_file_info *fi) {
    (void)path;
    (void)fi;
    size_t length = sizeof content - 1;
    if ((size_t)offset >= length)
        return 0;
    if (offset + size > length)
        size = length - offset;
    memcpy(buf, content + offset, size);
    return (int)size;
}

static const struct fuse_operations operations = {
    .getattr = getattr,
    .readdir = readdir,
    .open = open_file,
    .read = read_file,
};

int main(int argc, char *argv[]) {
    if (argc != 2)
        return 2;
    /* Foreground, single-threaded; attribute caching off, so a stat after
     * SIGSTOP reaches the (stopped) server instead of the kernel's cache. */
    char *args[] = {argv[0], "-f", "-s", "-o", "attr_timeout=0,entry_timeout=0", argv[1], NULL};
    return fuse_main(6, args, &operations, NULL);
}
