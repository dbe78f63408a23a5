/* The libbpf shim behind agent/dataplane/xdp.py; see xdp_loader.h. */
#include <errno.h>
#include <linux/if_link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "xdp_loader.h"

struct dp_object {
	struct bpf_object *obj;
};

/* libbpf reports through one process-wide print callback; keep the tail of what it
 * said per thread (the verifier's verdict ends its log), for dp_last_error(). */
static __thread char last_error[4096];

static void append(const char *text, size_t len)
{
	size_t used = strlen(last_error), room = sizeof(last_error) - 1;

	if (len >= room) {
		text += len - room;
		len = room;
		used = 0;
	} else if (used + len > room) {
		memmove(last_error, last_error + used + len - room, room - len);
		used = room - len;
	}
	memcpy(last_error + used, text, len);
	last_error[used + len] = '\0';
}

static int collect(enum libbpf_print_level level, const char *format, va_list args)
{
	va_list again;
	char *text;
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	va_copy(again, args);
	n = vsnprintf(NULL, 0, format, again);
	va_end(again);
	text = n > 0 ? malloc((size_t)n + 1) : NULL;
	if (text) {
		vsnprintf(text, (size_t)n + 1, format, args);
		append(text, (size_t)n);
		free(text);
	}
	return 0;
}

static void begin(void)
{
	static int installed;

	if (!installed) {
		libbpf_set_print(collect);
		installed = 1;
	}
	last_error[0] = '\0';
}

/* Record what failed (after anything libbpf said) and return -err. */
static int fail(int err, const char *what)
{
	char text[512];
	int n;

	n = snprintf(text, sizeof(text), "%s%s: %s", last_error[0] ? " | " : "", what, strerror(err));
	append(text, n < (int)sizeof(text) ? (size_t)n : sizeof(text) - 1);
	return -err;
}

const char *dp_last_error(void)
{
	return last_error;
}

struct dp_object *dp_open(const char *path)
{
	struct dp_object *self;
	int err;

	begin();
	self = calloc(1, sizeof(*self));
	if (!self) {
		fail(ENOMEM, "dp_open");
		return NULL;
	}
	self->obj = bpf_object__open_file(path, NULL);
	err = libbpf_get_error(self->obj);
	if (err) {
		free(self);
		fail(-err, path);
		return NULL;
	}
	err = bpf_object__load(self->obj);
	if (err) {
		bpf_object__close(self->obj);
		free(self);
		fail(-err, "loading the program (the verifier's log is above)");
		return NULL;
	}
	return self;
}

void dp_close(struct dp_object *self)
{
	if (!self)
		return;
	bpf_object__close(self->obj);
	free(self);
}

int dp_prog_fd(struct dp_object *self, const char *name)
{
	struct bpf_program *prog;

	begin();
	prog = bpf_object__find_program_by_name(self->obj, name);
	if (!prog)
		return fail(ENOENT, name);
	return bpf_program__fd(prog);
}

int dp_map_fd(struct dp_object *self, const char *name)
{
	struct bpf_map *map;

	begin();
	map = bpf_object__find_map_by_name(self->obj, name);
	if (!map)
		return fail(ENOENT, name);
	return bpf_map__fd(map);
}

int dp_prog_id(int prog_fd, uint32_t *id)
{
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info);

	begin();
	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return fail(errno, "the program's info");
	*id = info.id;
	return 0;
}

static __u32 mode_flags(int mode)
{
	return mode == DP_ATTACH_NATIVE ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE;
}

int dp_attach(int ifindex, int prog_fd, int mode, uint32_t replace_id)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	__u32 flags = mode_flags(mode);
	int old_fd = -1, err;

	begin();
	if (replace_id) {
		old_fd = bpf_prog_get_fd_by_id(replace_id);
		if (old_fd < 0)
			return fail(errno, "the program to replace");
		opts.old_prog_fd = old_fd;
		flags |= XDP_FLAGS_REPLACE;
	} else {
		flags |= XDP_FLAGS_UPDATE_IF_NOEXIST;
	}
	err = bpf_xdp_attach(ifindex, prog_fd, flags, &opts);
	if (old_fd >= 0)
		close(old_fd);
	return err ? fail(-err, mode == DP_ATTACH_NATIVE ? "attaching in native mode" : "attaching in generic mode") : 0;
}

int dp_detach(int ifindex, int mode, uint32_t prog_id)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	int err;

	begin();
	opts.old_prog_fd = bpf_prog_get_fd_by_id(prog_id);
	if (opts.old_prog_fd < 0)
		return fail(errno, "the program to detach");
	err = bpf_xdp_detach(ifindex, mode_flags(mode) | XDP_FLAGS_REPLACE, &opts);
	close(opts.old_prog_fd);
	return err ? fail(-err, "detaching") : 0;
}

int dp_query(int ifindex, uint32_t *prog_id, uint32_t *attach_mode, char *name)
{
	LIBBPF_OPTS(bpf_xdp_query_opts, opts);
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info);
	int err, fd;

	begin();
	name[0] = '\0';
	err = bpf_xdp_query(ifindex, 0, &opts);
	if (err)
		return fail(-err, "querying the interface's XDP program");
	*prog_id = opts.prog_id;
	*attach_mode = opts.attach_mode;
	if (!opts.prog_id)
		return 0;
	fd = bpf_prog_get_fd_by_id(opts.prog_id);
	if (fd < 0)
		return fail(errno, "the attached program");
	err = bpf_obj_get_info_by_fd(fd, &info, &len);
	close(fd);
	if (err)
		return fail(errno, "the attached program's info");
	memcpy(name, info.name, DP_NAME_LEN);
	name[DP_NAME_LEN - 1] = '\0';
	return 0;
}

int dp_prog_map_fd(uint32_t prog_id, const char *name)
{
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info), ids[16], i, count;
	int prog, fd;

	begin();
	prog = bpf_prog_get_fd_by_id(prog_id);
	if (prog < 0)
		return fail(errno, "the program");
	info.nr_map_ids = sizeof(ids) / sizeof(ids[0]);
	info.map_ids = (__u64)(unsigned long)ids;
	if (bpf_obj_get_info_by_fd(prog, &info, &len)) {
		close(prog);
		return fail(errno, "the program's maps");
	}
	close(prog);
	count = info.nr_map_ids < 16 ? info.nr_map_ids : 16;
	for (i = 0; i < count; i++) {
		struct bpf_map_info map = {};
		__u32 map_len = sizeof(map);

		fd = bpf_map_get_fd_by_id(ids[i]);
		if (fd < 0)
			continue;
		if (!bpf_obj_get_info_by_fd(fd, &map, &map_len) && !strncmp(map.name, name, DP_NAME_LEN - 1))
			return fd;
		close(fd);
	}
	return fail(ENOENT, name);
}

void dp_close_fd(int fd)
{
	if (fd >= 0)
		close(fd);
}

int dp_map_update(int fd, const void *key, const void *value)
{
	begin();
	return bpf_map_update_elem(fd, key, value, BPF_ANY) ? fail(errno, "map update") : 0;
}

int dp_map_lookup(int fd, const void *key, void *value)
{
	begin();
	return bpf_map_lookup_elem(fd, key, value) ? fail(errno, "map lookup") : 0;
}

int dp_map_delete(int fd, const void *key)
{
	begin();
	return bpf_map_delete_elem(fd, key) ? fail(errno, "map delete") : 0;
}

int dp_map_update_many(int fd, const void *keys, uint32_t key_size, const void *values,
		       uint32_t value_size, uint32_t count)
{
	const char *key = keys, *value = values;
	uint32_t i;
	int err;

	begin();
	for (i = 0; i < count; i++, key += key_size) {
		err = values ? bpf_map_update_elem(fd, key, value + (size_t)i * value_size, BPF_ANY)
			     : bpf_map_delete_elem(fd, key);
		if (err && !(errno == ENOENT && !values)) {
			fail(errno, values ? "map update" : "map delete");
			return (int)i;
		}
	}
	return (int)count;
}

int dp_test_run(int prog_fd, const void *data, uint32_t len, void *out, uint32_t *out_len,
		uint32_t repeat, uint32_t flags, uint32_t *verdict, uint32_t *duration_ns)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data, .data_size_in = len, .repeat = (int)repeat,
		    .flags = flags);

	begin();
	if (!(flags & DP_TEST_LIVE_FRAMES)) {
		opts.data_out = out;
		opts.data_size_out = *out_len;
	}
	if (bpf_prog_test_run_opts(prog_fd, &opts))
		return fail(errno, "test run");
	*out_len = opts.data_size_out;
	*verdict = opts.retval;
	*duration_ns = opts.duration;
	return 0;
}

int dp_btf_layout(const char *path, const char *type, const char *member, uint32_t *offset,
		  uint32_t *size)
{
	const struct btf_type *t;
	struct btf_member *m;
	struct btf *btf;
	__s32 id;
	int i, err = ENOENT;

	begin();
	btf = btf__parse(path, NULL);
	if (libbpf_get_error(btf))
		return fail(-(int)libbpf_get_error(btf), path);
	id = btf__find_by_name_kind(btf, type, BTF_KIND_STRUCT);
	if (id < 0)
		goto out;
	if (!member) {
		*offset = 0;
		*size = (uint32_t)btf__resolve_size(btf, id);
		err = 0;
		goto out;
	}
	t = btf__type_by_id(btf, id);
	m = btf_members(t);
	for (i = 0; i < btf_vlen(t); i++, m++) {
		if (strcmp(btf__name_by_offset(btf, m->name_off), member))
			continue;
		*offset = btf_member_bit_offset(t, i) / 8;
		*size = (uint32_t)btf__resolve_size(btf, m->type);
		err = 0;
		break;
	}
out:
	btf__free(btf);
	return err ? fail(err, member ? member : type) : 0;
}

int dp_possible_cpus(void)
{
	begin();
	return libbpf_num_possible_cpus();
}
