/* The physical floor of `status` naming inherited holders (issue 17): read
 * the link of every descriptor of every process, spread over one process
 * per online CPU as `ec-launch status` spreads its scan, and nothing else
 * (no lock table, no lock files, no fdinfo, no output). A helper that
 * inherited a lock is seen only this way: /proc/locks names the taker
 * alone, so a tool that names every holder reads at least this much.
 * bench/status.sh times it beside `status` and lslocks(8).
 *
 *   status-floor    (prints nothing; exit 0)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PIDS (1 << 20)

struct dirent64 {
  unsigned long ino;
  long off;
  unsigned short reclen;
  unsigned char type;
  char name[];
};

/* The longest entry getdents64 returns (a 255-byte name), rounded up. */
#define MAX_ENTRY 280

/* Calls `each` with every numeric entry of the open directory `dir`. A
 * reply that left room for the longest entry was the whole listing, so
 * the call that would return nothing is skipped, as ec-launch does. */
static void each_number(int dir, void (*each)(int dir, const char *name)) {
  static char buffer[1 << 15];
  long got;
  while ((got = syscall(SYS_getdents64, dir, buffer, sizeof buffer)) > 0) {
    for (long at = 0; at < got;) {
      struct dirent64 *entry = (struct dirent64 *)(buffer + at);
      if (entry->name[0] >= '0' && entry->name[0] <= '9') each(dir, entry->name);
      at += entry->reclen;
    }
    if (got + MAX_ENTRY <= (long)sizeof buffer) break;
  }
}

static int pids[MAX_PIDS], count;

static void keep_pid(int dir, const char *name) {
  (void)dir;
  if (count < MAX_PIDS) pids[count++] = atoi(name);
}

static void read_link(int dir, const char *name) {
  static char link[4096];
  readlinkat(dir, name, link, sizeof link);
}

int main(void) {
  int proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (proc < 0) return 1;
  each_number(proc, keep_pid);
  long workers = sysconf(_SC_NPROCESSORS_ONLN), me = 0;
  for (long w = 1; w < workers; w++)
    if (fork() == 0) {
      me = w;
      break;
    }
  for (int i = me; i < count; i += workers) {
    char path[32];
    snprintf(path, sizeof path, "%d/fd", pids[i]);
    int fds = openat(proc, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fds < 0) continue;
    each_number(fds, read_link);
    close(fds);
  }
  if (me != 0) _exit(0);
  while (wait(NULL) > 0) {
  }
  return 0;
}
