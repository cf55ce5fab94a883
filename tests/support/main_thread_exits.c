/* A program whose main thread exits while another runs on (issue 20
 * item 3, ECP-0136): the thread-group leader becomes a zombie, its
 * /proc/<pid>/fd is empty, and the other thread keeps every descriptor
 * (the inherited lock among them) and, given HOST PORT, reads a TCP stream.
 *
 * Usage: main_thread_exits [HOST PORT]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char **arguments;

static void *run(void *unused) {
    (void)unused;
    if (arguments[1] && arguments[2]) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(arguments[2]))};
        inet_pton(AF_INET, arguments[1], &address.sin_addr);
        if (s < 0 || connect(s, (struct sockaddr *)&address, sizeof address) != 0)
            _exit(3);
        const char request[] = "GET /auto/v5.1 HTTP/1.0\r\n\r\n";
        (void)!write(s, request, sizeof request - 1);
        char buffer[4096];
        while (read(s, buffer, sizeof buffer) > 0) {
        }
        _exit(0);
    }
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char *argv[]) {
    (void)argc;
    arguments = argv;
    pthread_t thread;
    if (pthread_create(&thread, NULL, run, NULL) != 0)
        return 2;
    pthread_exit(NULL);
}
