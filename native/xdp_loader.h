/* A narrow libbpf shim for cffi: load the XDP filter, attach it, work its maps.
 *
 * Python never parses ELF or builds bpf_attr: it calls these, and libbpf does
 * the rest. Every function returns 0 (or a descriptor / count) on success and
 * a negative errno on failure; dp_last_error() then says what libbpf said.
 * Fed to cffi's cdef by native/build.py, which keeps only integer #defines.
 */
#ifndef DPAGENT_XDP_LOADER_H
#define DPAGENT_XDP_LOADER_H

#include <stdint.h>

/* dp_attach() modes, and dp_query()'s attach_mode (XDP_ATTACHED_*). */
#define DP_ATTACH_NATIVE 1
#define DP_ATTACH_GENERIC 2
#define DP_ATTACHED_NONE 0
#define DP_ATTACHED_DRV 1
#define DP_ATTACHED_SKB 2
#define DP_ATTACHED_HW 3
#define DP_ATTACHED_MULTI 4
/* Longest program or map name the kernel keeps, with its NUL (BPF_OBJ_NAME_LEN). */
#define DP_NAME_LEN 16

struct dp_object;

/* Open and load the BPF object at `path` (the verifier runs here). NULL on failure. */
struct dp_object *dp_open(const char *path);
void dp_close(struct dp_object *obj);
int dp_prog_fd(struct dp_object *obj, const char *name);
int dp_map_fd(struct dp_object *obj, const char *name);
/* The kernel's id of a loaded program, as dp_query() reports what is attached. */
int dp_prog_id(int prog_fd, uint32_t *id);

/* Attach `prog_fd` to the interface in `mode`. With `replace_id`, only in place of the
 * program of that id (atomically); without, only if the interface has none. */
int dp_attach(int ifindex, int prog_fd, int mode, uint32_t replace_id);
/* Detach the program of id `prog_id` attached in `mode`, and nothing else. */
int dp_detach(int ifindex, int mode, uint32_t prog_id);
/* The interface's XDP program: id (0: none), attach mode and name. */
int dp_query(int ifindex, uint32_t *prog_id, uint32_t *attach_mode, char *name);
/* A descriptor for map `name` of the loaded program `prog_id` (another process's too). */
int dp_prog_map_fd(uint32_t prog_id, const char *name);
void dp_close_fd(int fd);

int dp_map_update(int fd, const void *key, const void *value);
int dp_map_lookup(int fd, const void *key, void *value);
int dp_map_delete(int fd, const void *key);
/* Update (or delete, with values NULL) `count` elements, one syscall each, without a
 * Python round trip between them. Returns how many succeeded before the first failure. */
int dp_map_update_many(int fd, const void *keys, uint32_t key_size, const void *values,
		       uint32_t value_size, uint32_t count);

/* BPF_PROG_TEST_RUN flag: frames the program passes, redirects or transmits really go
 * there (how xdp-trafficgen generates traffic); `out` is then not written. */
#define DP_TEST_LIVE_FRAMES 2

/* BPF_PROG_TEST_RUN: run the program `repeat` times on `data`; the packet it leaves
 * goes to `out` (`*out_len`: its capacity in, its length out). */
int dp_test_run(int prog_fd, const void *data, uint32_t len, void *out, uint32_t *out_len,
		uint32_t repeat, uint32_t flags, uint32_t *verdict, uint32_t *duration_ns);

/* The BTF layout the BPF compiler gave a struct of the object at `path`: its size,
 * or a member's byte offset and size (`member` non-NULL). For the layout test. */
int dp_btf_layout(const char *path, const char *type, const char *member, uint32_t *offset,
		  uint32_t *size);

int dp_possible_cpus(void);
/* What the last failing call of this thread said (libbpf's messages included). */
const char *dp_last_error(void);

#endif
