/* Users by name or uid from /etc/passwd and their groups from /etc/group. A static glibc
 * binary cannot use NSS (getpwnam would look for shared libraries the initramfs does not have),
 * and the files are small: read them line by line, each line bounded. */
#include "agent.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_LEN 4096

/* Splits a colon-separated line into at most max fields; returns how many. */
static int split(char *line, char **f, int max)
{
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == ':') {
            *p = 0;
            f[n++] = p + 1;
        }
    return n;
}

static bool parse_id(const char *s, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v > 0xfffffffeUL)
        return false;
    *out = v;
    return true;
}

/* Reads one line; returns false at EOF. Over-long lines are skipped whole. */
static bool next_line(FILE *f, char *buf)
{
    for (;;) {
        if (!fgets(buf, LINE_MAX_LEN, f))
            return false;
        size_t n = strlen(buf);
        if (n && buf[n - 1] == '\n') {
            buf[n - 1] = 0;
            return true;
        }
        if (feof(f))
            return true;
        int ch;
        while ((ch = fgetc(f)) != EOF && ch != '\n')
            ;
    }
}

static void add_groups(struct user *u)
{
    FILE *f = fopen("/etc/group", "re");
    u->groups[0] = u->gid;
    u->ngroups = 1;
    if (!f)
        return;
    char *line = malloc(LINE_MAX_LEN);
    while (line && next_line(f, line)) {
        char *fld[4];
        unsigned long gid;
        if (split(line, fld, 4) < 4 || !parse_id(fld[2], &gid) || gid == u->gid)
            continue;
        for (char *save = NULL, *m = strtok_r(fld[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
            if (strcmp(m, u->name) == 0 && u->ngroups < (int)(sizeof(u->groups) / sizeof(u->groups[0]))) {
                u->groups[u->ngroups++] = (gid_t)gid;
                break;
            }
    }
    free(line);
    fclose(f);
}

int user_lookup(const char *name, uid_t uid, struct user *u, char *err, size_t cap)
{
    memset(u, 0, sizeof(*u));
    FILE *f = fopen("/etc/passwd", "re");
    char *line = malloc(LINE_MAX_LEN);
    bool found = false;
    while (f && line && next_line(f, line)) {
        char *fld[7];
        unsigned long id, gid;
        if (split(line, fld, 7) < 7 || !parse_id(fld[2], &id) || !parse_id(fld[3], &gid))
            continue;
        if (name ? strcmp(fld[0], name) != 0 : id != uid)
            continue;
        if (strlen(fld[0]) >= sizeof(u->name) || strlen(fld[5]) >= sizeof(u->home))
            continue;
        u->uid = (uid_t)id;
        u->gid = (gid_t)gid;
        strcpy(u->name, fld[0]);
        strcpy(u->home, fld[5][0] ? fld[5] : "/");
        found = true;
        break;
    }
    free(line);
    if (f)
        fclose(f);
    if (!found) {
        if (name) {
            snprintf(err, cap, "no user %s in /etc/passwd", name);
            return -ENOENT;
        }
        /* a bare uid: its own group, no supplementary groups, home / */
        u->uid = uid;
        u->gid = (gid_t)uid;
        snprintf(u->name, sizeof(u->name), "%u", (unsigned)uid);
        strcpy(u->home, "/");
        u->groups[0] = u->gid;
        u->ngroups = 1;
        return 0;
    }
    add_groups(u);
    return 0;
}
