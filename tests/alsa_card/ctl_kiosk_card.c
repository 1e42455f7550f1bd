/*
 * ctl_kiosk_card.c - the control device of the emulated sound card: an alsa-lib external control plugin
 * (snd_ctl_ext), companion of pcm_kiosk_card.c.
 *
 * A card's mixer is a set of kernel control elements (sound/core/control.c); alsa-lib's simple mixer
 * (src/mixer/simple_none.c) groups "<name> Playback Volume" and "<name> Playback Switch" into the simple
 * element <name>, which is what pyalsaaudio's Mixer(control=..., device=...) looks up (alsaaudio.c,
 * alsamixer_new(): snd_mixer_attach(device) opens `ctl.<device>` from the configuration, and a missing
 * element raises "Unable to find mixer control <name>,<id> [<device>]"). What this plugin models:
 *
 * - A playback volume: "<control> Playback Volume", integer, `min`..`max` (default 0..255), `channels`
 *   values (1 or 2, default 2), with a dB TLV of type DB_LINEAR from mute to 0 dB. That TLV says the gain is
 *   (value - min) / (max - min) in amplitude, which is exactly how the PCM plugin scales what it plays, so
 *   pyalsaaudio's VOLUME_UNITS_DB (through alsa-lib's snd_tlv_convert_to_dB) agrees with the output.
 *   Optionally (`switch`, default true) "<control> Playback Switch", boolean, one per channel.
 * - Persistence: the values live in the `state` file (a small text file shared with the PCM plugin), so
 *   they survive close and reopen, and are shared by every handle in every process, like a card's control
 *   registers. Writes replace the file atomically (rename) under an flock on "<state>.lock". A missing
 *   file is created with every channel at `initial` (default max) and switched on.
 * - Change notifications (kernel snd_ctl_notify()): each handle compares the file with what it last
 *   reported and returns one value event per changed element from read_event; its poll descriptor is an
 *   inotify watch on the state file's directory. pyalsaaudio's getvolume() calls snd_mixer_handle_events()
 *   first, so a Mixer sees changes made through another handle or process.
 * - A card without any volume control (HDMI, a plain I2S DAC): no `state` => no elements at all; the ctl
 *   device still opens, alsaaudio.mixers() lists nothing and Mixer('PCM', device=...) raises.
 *
 * Configuration (ctl.NAME { type kiosk_card ... }):
 *   state "PATH"      the volume state file; absent: no mixer elements
 *   control "NAME"    the simple element name (default "PCM")
 *   min INT, max INT  the raw range (default 0, 255)
 *   channels INT      1 or 2 (default 2)
 *   switch BOOL       whether there is a playback switch (default true)
 *   initial INT       the value of a newly created state (default max)
 *   card_id "ID", card_name "NAME"   what snd_ctl_card_info reports (defaults: the ctl name, "Kiosk Card")
 *
 * Not modelled: other element types (enumerations, capture controls, IEC958), per-element locks, user
 * controls added by applications (softvol), TLV writes, and volume ramps.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <alsa/asoundlib.h>
#include <alsa/control_external.h>

#define KC_MAX_CHANNELS 2
#define KC_VOLUME 0
#define KC_SWITCH 1

typedef struct {
	long volume[KC_MAX_CHANNELS];
	long on[KC_MAX_CHANNELS];
} kc_values_t;

typedef struct {
	snd_ctl_ext_t ext;
	char *state;       /* NULL: no mixer elements */
	char control[28]; /* the simple element name */
	long min, max, initial;
	unsigned int channels;
	int has_switch;
	unsigned int tlv[4];
	kc_values_t reported; /* what this handle last reported through events */
	unsigned int pending; /* elements with an event not yet read (bit per key) */
} kiosk_ctl_t;

static int lock_state(const kiosk_ctl_t *kc)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s.lock", kc->state);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int err = -errno;
			close(fd);
			return err;
		}
	}
	return fd;
}

static void unlock_state(int fd)
{
	if (fd >= 0)
		close(fd);
}

static long clamp(const kiosk_ctl_t *kc, long v)
{
	return v < kc->min ? kc->min : v > kc->max ? kc->max : v;
}

/* Read the state file; returns 0, or -ENOENT when it does not exist (values then hold the defaults). */
static int load_values(const kiosk_ctl_t *kc, kc_values_t *values)
{
	char line[256];
	unsigned int c;
	FILE *f;

	for (c = 0; c < KC_MAX_CHANNELS; c++) {
		values->volume[c] = kc->initial;
		values->on[c] = 1;
	}
	f = fopen(kc->state, "re");
	if (!f)
		return -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		long *dest = NULL;
		char *p = line, *end;
		if (!strncmp(p, "volume ", 7))
			dest = values->volume, p += 7;
		else if (!strncmp(p, "switch ", 7))
			dest = values->on, p += 7;
		if (!dest)
			continue;
		for (c = 0; c < KC_MAX_CHANNELS; c++) {
			long v = strtol(p, &end, 10);
			if (end == p) {
				if (c > 0)
					dest[c] = dest[c - 1]; /* a mono state read by a stereo control */
				continue;
			}
			dest[c] = v;
			p = end;
		}
	}
	fclose(f);
	for (c = 0; c < KC_MAX_CHANNELS; c++) {
		values->volume[c] = clamp(kc, values->volume[c]);
		values->on[c] = values->on[c] != 0;
	}
	return 0;
}

/* Replace the state file (call with the state lock held). */
static int save_values(const kiosk_ctl_t *kc, const kc_values_t *values)
{
	char tmp[PATH_MAX];
	unsigned int c;
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", kc->state, (int)getpid());
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	fprintf(f, "min %ld\nmax %ld\nvolume", kc->min, kc->max);
	for (c = 0; c < kc->channels; c++)
		fprintf(f, " %ld", values->volume[c]);
	fprintf(f, "\nswitch");
	for (c = 0; c < kc->channels; c++)
		fprintf(f, " %ld", kc->has_switch ? values->on[c] : 1L);
	fprintf(f, "\n");
	if (fclose(f) != 0) {
		unlink(tmp);
		return -EIO;
	}
	if (rename(tmp, kc->state) < 0) {
		int err = -errno;
		unlink(tmp);
		return err;
	}
	return 0;
}

static unsigned int elem_total(const kiosk_ctl_t *kc)
{
	if (!kc->state)
		return 0;
	return kc->has_switch ? 2 : 1;
}

static void fill_id(const kiosk_ctl_t *kc, unsigned int key, snd_ctl_elem_id_t *id)
{
	char name[64]; /* control is at most 24 characters: fits the 44 of an element id */

	snprintf(name, sizeof(name), "%s Playback %s", kc->control, key == KC_VOLUME ? "Volume" : "Switch");
	snd_ctl_elem_id_set_interface(id, SND_CTL_ELEM_IFACE_MIXER);
	snd_ctl_elem_id_set_name(id, name);
	snd_ctl_elem_id_set_index(id, 0);
}

/* ------------------------------------------------------------------------------------------ callbacks */

static void kc_close(snd_ctl_ext_t *ext)
{
	kiosk_ctl_t *kc = ext->private_data;

	if (ext->poll_fd >= 0)
		close(ext->poll_fd);
	free(kc->state);
	free(kc);
}

static int kc_elem_count(snd_ctl_ext_t *ext)
{
	return (int)elem_total(ext->private_data);
}

static int kc_elem_list(snd_ctl_ext_t *ext, unsigned int offset, snd_ctl_elem_id_t *id)
{
	kiosk_ctl_t *kc = ext->private_data;

	if (offset >= elem_total(kc))
		return -EINVAL;
	fill_id(kc, offset, id);
	return 0;
}

static snd_ctl_ext_key_t kc_find_elem(snd_ctl_ext_t *ext, const snd_ctl_elem_id_t *id)
{
	kiosk_ctl_t *kc = ext->private_data;
	unsigned int key;

	if (snd_ctl_elem_id_get_interface(id) != SND_CTL_ELEM_IFACE_MIXER || snd_ctl_elem_id_get_index(id) != 0)
		return SND_CTL_EXT_KEY_NOT_FOUND;
	for (key = 0; key < elem_total(kc); key++) {
		snd_ctl_elem_id_t *mine;
		snd_ctl_elem_id_alloca(&mine);
		fill_id(kc, key, mine);
		if (!strcmp(snd_ctl_elem_id_get_name(mine), snd_ctl_elem_id_get_name(id)))
			return key;
	}
	return SND_CTL_EXT_KEY_NOT_FOUND;
}

static int kc_get_attribute(snd_ctl_ext_t *ext, snd_ctl_ext_key_t key, int *type, unsigned int *acc,
			    unsigned int *count)
{
	kiosk_ctl_t *kc = ext->private_data;

	if (key >= elem_total(kc))
		return -EINVAL;
	*count = kc->channels;
	*acc = SND_CTL_EXT_ACCESS_READWRITE;
	if (key == KC_VOLUME) {
		*type = SND_CTL_ELEM_TYPE_INTEGER;
		*acc |= SND_CTL_EXT_ACCESS_TLV_READ;
	} else {
		*type = SND_CTL_ELEM_TYPE_BOOLEAN;
	}
	return 0;
}

static int kc_get_integer_info(snd_ctl_ext_t *ext, snd_ctl_ext_key_t key, long *imin, long *imax, long *istep)
{
	kiosk_ctl_t *kc = ext->private_data;

	if (key != KC_VOLUME)
		return -EINVAL;
	*imin = kc->min;
	*imax = kc->max;
	*istep = 1;
	return 0;
}

static int kc_read_integer(snd_ctl_ext_t *ext, snd_ctl_ext_key_t key, long *value)
{
	kiosk_ctl_t *kc = ext->private_data;
	kc_values_t values;
	unsigned int c;

	if (key >= elem_total(kc))
		return -EINVAL;
	load_values(kc, &values);
	for (c = 0; c < kc->channels; c++)
		value[c] = key == KC_VOLUME ? values.volume[c] : values.on[c];
	return 0;
}

static int kc_write_integer(snd_ctl_ext_t *ext, snd_ctl_ext_key_t key, long *value)
{
	kiosk_ctl_t *kc = ext->private_data;
	kc_values_t values;
	unsigned int c;
	int changed = 0, fd, err;

	if (key >= elem_total(kc))
		return -EINVAL;
	for (c = 0; c < kc->channels; c++) {
		if (key == KC_VOLUME && (value[c] < kc->min || value[c] > kc->max))
			return -EINVAL;
		if (key == KC_SWITCH && value[c] != 0 && value[c] != 1)
			return -EINVAL;
	}
	fd = lock_state(kc);
	if (fd < 0)
		return fd;
	load_values(kc, &values);
	for (c = 0; c < kc->channels; c++) {
		long *slot = key == KC_VOLUME ? &values.volume[c] : &values.on[c];
		if (*slot != value[c]) {
			*slot = value[c];
			changed = 1;
		}
	}
	err = changed ? save_values(kc, &values) : 0;
	unlock_state(fd);
	return err < 0 ? err : changed; /* as a kernel put(): 1 when the value changed */
}

static void kc_subscribe_events(snd_ctl_ext_t *ext, int subscribe)
{
	kiosk_ctl_t *kc = ext->private_data;

	if (subscribe && kc->state) {
		load_values(kc, &kc->reported);
		kc->pending = 0;
	}
}

static int kc_read_event(snd_ctl_ext_t *ext, snd_ctl_elem_id_t *id, unsigned int *event_mask)
{
	kiosk_ctl_t *kc = ext->private_data;
	char buf[4096];
	unsigned int key, c;

	/* empty the inotify queue: it only serves to wake pollers */
	while (read(ext->poll_fd, buf, sizeof(buf)) > 0)
		;
	if (!ext->subscribed || !kc->state)
		return -EAGAIN;
	if (!kc->pending) {
		kc_values_t now;
		load_values(kc, &now);
		for (c = 0; c < kc->channels; c++) {
			if (now.volume[c] != kc->reported.volume[c])
				kc->pending |= 1u << KC_VOLUME;
			if (kc->has_switch && now.on[c] != kc->reported.on[c])
				kc->pending |= 1u << KC_SWITCH;
		}
		kc->reported = now;
	}
	for (key = 0; key < elem_total(kc); key++) {
		if (kc->pending & (1u << key)) {
			kc->pending &= ~(1u << key);
			snd_ctl_elem_id_clear(id);
			fill_id(kc, key, id);
			snd_ctl_elem_id_set_numid(id, key + 1); /* as snd_ctl_ext lists them: offset + 1 */
			*event_mask = SND_CTL_EVENT_MASK_VALUE;
			return 1;
		}
	}
	return -EAGAIN;
}

static const snd_ctl_ext_callback_t kc_callback = {
	.close = kc_close,
	.elem_count = kc_elem_count,
	.elem_list = kc_elem_list,
	.find_elem = kc_find_elem,
	.get_attribute = kc_get_attribute,
	.get_integer_info = kc_get_integer_info,
	.read_integer = kc_read_integer,
	.write_integer = kc_write_integer,
	.subscribe_events = kc_subscribe_events,
	.read_event = kc_read_event,
};

/* ------------------------------------------------------------------------------------------ opening */

static int watch_state(const char *state)
{
	char dir[PATH_MAX];
	char *slash;
	int fd;

	fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fd < 0)
		return -1;
	snprintf(dir, sizeof(dir), "%s", state);
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		snprintf(dir, sizeof(dir), ".");
	if (inotify_add_watch(fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

SND_CTL_PLUGIN_DEFINE_FUNC(kiosk_card)
{
	snd_config_iterator_t i, next;
	const char *state = NULL, *control = "PCM", *card_id = NULL, *card_name = "Kiosk Card";
	long min = 0, max = 255, channels = 2, initial = LONG_MIN;
	int has_switch = 1, err;
	kiosk_ctl_t *kc;

	(void)root;
	snd_config_for_each(i, next, conf) {
		snd_config_t *n = snd_config_iterator_entry(i);
		const char *id;
		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint"))
			continue;
		if (!strcmp(id, "state") || !strcmp(id, "control") || !strcmp(id, "card_id") ||
		    !strcmp(id, "card_name")) {
			const char *s;
			if (snd_config_get_string(n, &s) < 0) {
				SNDERR("kiosk_card: %s must be a string", id);
				return -EINVAL;
			}
			if (!strcmp(id, "state"))
				state = s;
			else if (!strcmp(id, "control"))
				control = s;
			else if (!strcmp(id, "card_id"))
				card_id = s;
			else
				card_name = s;
		} else if (!strcmp(id, "min") || !strcmp(id, "max") || !strcmp(id, "channels") ||
			   !strcmp(id, "initial")) {
			long v;
			if (snd_config_get_integer(n, &v) < 0) {
				SNDERR("kiosk_card: %s must be an integer", id);
				return -EINVAL;
			}
			if (!strcmp(id, "min"))
				min = v;
			else if (!strcmp(id, "max"))
				max = v;
			else if (!strcmp(id, "channels"))
				channels = v;
			else
				initial = v;
		} else if (!strcmp(id, "switch")) {
			has_switch = snd_config_get_bool(n);
			if (has_switch < 0) {
				SNDERR("kiosk_card: switch must be a boolean");
				return -EINVAL;
			}
		} else {
			SNDERR("kiosk_card: unknown field %s", id);
			return -EINVAL;
		}
	}
	if (max <= min || channels < 1 || channels > KC_MAX_CHANNELS || !*control || strlen(control) > 24) {
		SNDERR("kiosk_card: invalid min/max, channels (1..%d) or control name", KC_MAX_CHANNELS);
		return -EINVAL;
	}
	if (initial == LONG_MIN)
		initial = max;
	if (initial < min || initial > max) {
		SNDERR("kiosk_card: initial must be within min..max");
		return -EINVAL;
	}

	kc = calloc(1, sizeof(*kc));
	if (!kc)
		return -ENOMEM;
	snprintf(kc->control, sizeof(kc->control), "%s", control);
	kc->min = min;
	kc->max = max;
	kc->initial = initial;
	kc->channels = (unsigned int)channels;
	kc->has_switch = has_switch;
	kc->tlv[0] = SND_CTL_TLVT_DB_LINEAR;
	kc->tlv[1] = 2 * sizeof(unsigned int);
	kc->tlv[2] = (unsigned int)SND_CTL_TLV_DB_GAIN_MUTE;
	kc->tlv[3] = 0;
	kc->ext.poll_fd = -1;
	if (state) {
		int fd;
		kc_values_t values;
		kc->state = strdup(state);
		if (!kc->state) {
			err = -ENOMEM;
			goto fail;
		}
		/* a new card starts at its initial state; an existing state is kept (and fitted to the range) */
		fd = lock_state(kc);
		if (fd < 0) {
			err = fd;
			SNDERR("kiosk_card: cannot lock %s.lock", state);
			goto fail;
		}
		(void)load_values(kc, &values);
		err = save_values(kc, &values);
		unlock_state(fd);
		if (err < 0) {
			SNDERR("kiosk_card: cannot write %s", state);
			goto fail;
		}
		kc->reported = values;
		kc->ext.poll_fd = watch_state(state);
	}
	if (kc->ext.poll_fd < 0)
		kc->ext.poll_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); /* never readable: no events */

	kc->ext.version = SND_CTL_EXT_VERSION;
	kc->ext.card_idx = -1;
	snprintf(kc->ext.id, sizeof(kc->ext.id), "%s", card_id ? card_id : name);
	snprintf(kc->ext.driver, sizeof(kc->ext.driver), "KioskCard");
	snprintf(kc->ext.name, sizeof(kc->ext.name), "%s", card_name);
	snprintf(kc->ext.longname, sizeof(kc->ext.longname), "%s (emulated)", card_name);
	snprintf(kc->ext.mixername, sizeof(kc->ext.mixername), "Kiosk Card Mixer");
	kc->ext.callback = &kc_callback;
	kc->ext.private_data = kc;
	kc->ext.tlv.p = kc->tlv;

	err = snd_ctl_ext_create(&kc->ext, name, mode);
	if (err < 0)
		goto fail;
	*handlep = kc->ext.handle;
	return 0;

fail:
	if (kc->ext.poll_fd >= 0)
		close(kc->ext.poll_fd);
	free(kc->state);
	free(kc);
	return err;
}

SND_CTL_PLUGIN_SYMBOL(kiosk_card);
