/*
 * virtio_vsock_linux: a static Linux program for the e2e tests' guests (not a CPL3 test guest).
 *   vsockecho listen PORT        accept vsock connections on PORT forever, echo every byte back
 *   vsockecho connect PORT MSG   connect to CID 2 (the host) PORT, send MSG, print the reply
 * Prints "VMMD: ..." lines on stdout, which the init sends to the serial console.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <unistd.h>

static int listen_forever(unsigned port)
{
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 8)) {
        printf("VMMD: vsock listen %u failed: %s\n", port, strerror(errno));
        return 1;
    }
    printf("VMMD: vsock listening %u\n", port);
    fflush(stdout);
    signal(SIGCHLD, SIG_IGN);
    for (unsigned n = 1;; n++) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            printf("VMMD: vsock accept failed: %s\n", strerror(errno));
            fflush(stdout);
            sleep(1);
            continue;
        }
        printf("VMMD: vsock accepted %u\n", n);
        fflush(stdout);
        if (fork() == 0) {
            char buf[65536];
            ssize_t got;
            while ((got = read(c, buf, sizeof(buf))) > 0)
                for (ssize_t off = 0; off < got;) {
                    ssize_t w = write(c, buf + off, (size_t)(got - off));
                    if (w <= 0)
                        _exit(1);
                    off += w;
                }
            _exit(0);
        }
        close(c);
    }
}

static int connect_once(unsigned port, const char *msg)
{
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a))) {
        printf("VMMD: vsock connect %u failed: %s\n", port, strerror(errno));
        return 1;
    }
    if (write(s, msg, strlen(msg)) != (ssize_t)strlen(msg))
        return 1;
    char buf[256];
    ssize_t got = read(s, buf, sizeof(buf) - 1);
    buf[got > 0 ? got : 0] = 0;
    printf("VMMD: vsock reply %s\n", buf);
    close(s);
    return got > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "listen"))
        return listen_forever((unsigned)atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "connect"))
        return connect_once((unsigned)atoi(argv[2]), argv[3]);
    fprintf(stderr, "usage: vsockecho listen PORT | connect PORT MSG\n");
    return 2;
}
