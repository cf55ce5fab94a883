/* The physical floor of a lock-and-exec launch (issue 17): open the lock
 * file, flock(LOCK_EX|LOCK_NB), exec the program holding it; nothing else.
 * bench/launch.sh compiles it statically, as ec-launch is linked, so the
 * difference between the two is ec-launch's own work.
 *
 *   floor LOCKFILE PROGRAM [ARGS...]   (exit 75 when the lock is held)
 */
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 3) return 64;
  /* No O_CLOEXEC: the descriptor, and so the lock, must survive exec. */
  int fd = open(argv[1], O_RDWR | O_CREAT | O_NOCTTY, 0644);
  if (fd < 0) return 73;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) return 75;
  execv(argv[2], argv + 2);
  return 127;
}
