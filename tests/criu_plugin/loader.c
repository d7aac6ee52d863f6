/*
 * A stand-in for CRIU's plugin loader (criu/plugin.c of CRIU 3.17), built against CRIU's own
 * installed header so that the descriptor layout is CRIU's, not ours:
 *
 *   loader PLUGIN.so STAGE IMAGES_DIR
 *
 * dlopen(RTLD_LAZY); dlsym("CR_PLUGIN_DESC"); CRIU's checks (version <= CRIU_PLUGIN_VERSION,
 * max_hooks <= CR_PLUGIN_HOOK__MAX); init(stage). Then, for DUMP and RESTORE (CRIU never calls
 * exit after a pre-dump), reads "exit N" from stdin, calls exit(stage, N) and dlcloses, as
 * cr_plugin_fini does. It exports what CRIU exports to plugins (-rdynamic): print_on_level and
 * criu_get_image_dir. Everything it does is printed, one line each, for the test to check.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criu/criu-plugin.h>

static int images_fd = -1;

int criu_get_image_dir(void)
{
	return images_fd;
}

void print_on_level(unsigned int level, const char *fmt, ...)
{
	va_list args;

	printf("log[%u] ", level);
	va_start(args, fmt);
	vprintf(fmt, args);
	va_end(args);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	cr_plugin_desc_t *d;
	char line[64];
	void *h;
	int stage, ret, i;

	if (argc != 4) {
		fprintf(stderr, "usage: loader PLUGIN.so STAGE IMAGES_DIR\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	stage = atoi(argv[2]);
	images_fd = open(argv[3], O_RDONLY | O_DIRECTORY);
	if (images_fd < 0) {
		perror("images dir");
		return 2;
	}
	h = dlopen(argv[1], RTLD_LAZY);
	if (!h) {
		printf("dlopen failed: %s\n", dlerror());
		return 3;
	}
	d = dlsym(h, "CR_PLUGIN_DESC");
	if (!d) {
		printf("no CR_PLUGIN_DESC\n");
		return 3;
	}
	if (d->version > CRIU_PLUGIN_VERSION || d->max_hooks > CR_PLUGIN_HOOK__MAX) {
		printf("Corrupted plugin: version %#x max_hooks %u\n", d->version, d->max_hooks);
		return 4;
	}
	printf("loaded %s sizeof=%zu version=%#x max_hooks=%u limit=%d\n", d->name, sizeof(*d), d->version,
	       d->max_hooks, CR_PLUGIN_HOOK__MAX);
	for (i = 0; i < (int)d->max_hooks; i++)
		if (d->hooks[i])
			printf("hook %d set\n", i);
	ret = d->init ? d->init(stage) : 0;
	printf("init=%d\n", ret);
	if (ret)
		return 5;
	if (stage == CR_PLUGIN_STAGE__PRE_DUMP) {
		printf("pre-dump: no exit\n");
		/* Like CRIU after a pre-dump: finish without calling exit or dlclose. */
		if (!fgets(line, sizeof(line), stdin))
			return 0;
		return 0;
	}
	if (!fgets(line, sizeof(line), stdin) || sscanf(line, "exit %d", &ret) != 1) {
		printf("no exit line\n");
		return 6;
	}
	if (d->exit)
		d->exit(stage, ret);
	printf("exited\n");
	dlclose(h);
	printf("unloaded\n");
	return 0;
}
