/*
 * pcm_kiosk_card.c - an emulated sound card PCM for tests: an alsa-lib external I/O plugin (ioplug).
 *
 * The test machines have no sound card, and alsa-lib's own `null`/`file` plugins are kinder than hardware:
 * they never block, never keep real time, never underrun and can be opened by any number of users. This
 * plugin behaves like the kernel side of a card (one PCM substream behind `hw:`), so that tests drive real
 * alsa-lib and real pyalsaaudio against the behaviour of the Raspberry Pi's cards. What it models, and where
 * the real behaviour comes from:
 *
 * 1. One holder at a time (kernel sound/core/pcm_native.c, snd_pcm_open()/snd_pcm_release()): a substream
 *    that is taken makes an O_NONBLOCK open fail at once with EBUSY, while a blocking open sleeps until the
 *    holder closes (a signal interrupts the wait: EINTR). alsa-lib's src/pcm/pcm_hw.c (_snd_pcm_hw_open)
 *    opens the device non-blocking unless `defaults.pcm.nonblock` is false (the stock alsa.conf sets it to
 *    1) or the PCM's own `nonblock` option says otherwise, and an explicit SND_PCM_NONBLOCK open is always
 *    non-blocking. So, with stock settings, even a PCM_NORMAL open of a busy card fails with EBUSY. Here the
 *    same decision is taken from the root configuration and the `nonblock_open` option, and the holder is an
 *    flock() on a lock file (one per direction, as a card's playback and capture substreams are separate):
 *    LOCK_NB gives EBUSY, a plain LOCK_EX waits. flock belongs to the open file description, so it excludes
 *    other threads and processes alike and is released by close() or by the death of the holder.
 *
 * 2. Real-time pacing: once started, the card consumes (playback) or produces (capture) frames at the
 *    configured rate, from CLOCK_MONOTONIC. The position is computed on demand (the ioplug `pointer`
 *    callback) from the time since the stream started. Blocking transfers wait in alsa-lib's
 *    snd_pcm_wait(), which polls the plugin's descriptor: a timerfd armed for the moment enough frames will
 *    be available (avail_min from the sw_params, or the end of a drain), and poll_revents turns its
 *    readiness into POLLOUT/POLLIN only when that is really the case.
 *
 * 3. Underrun and overrun (kernel sound/core/pcm_lib.c, snd_pcm_update_state(): the stream stops in XRUN
 *    when avail reaches the stop threshold, by default the buffer size): if the playback position reaches
 *    what was written (the buffer ran empty), or unread capture fills the whole buffer, `pointer` returns
 *    -EPIPE, alsa-lib puts the PCM in XRUN and the next transfer fails with -EPIPE. pyalsaaudio 0.11
 *    (alsaaudio.c, alsapcm_write()/alsapcm_read()) then calls snd_pcm_prepare() and returns -EPIPE: the
 *    data of that call is not played. The card stops at the underrun and restarts on the next start.
 *
 * 4. What was played goes to the `played` file (raw S16_LE, the stream's channels, appended): exactly the
 *    frames the card consumed, in order, scaled by the mixer volume at the time they were consumed (as an
 *    analogue output stage would), with zeros for every frame period between two played frames where the
 *    card had nothing: after an underrun, a drop, a pause, a drain. Frames still buffered when the
 *    stream is dropped or closed without a drain are never played, as on a card. The time line starts at
 *    the first start after the open, and runs on across restarts until the PCM is closed.
 *    Capture reads the `capture_file` (raw S16_LE, `capture_channels` interleaved; stream channel c takes
 *    file channel c % capture_channels) on the same time line: the frame captured at time t is the file's
 *    frame at t since the first start, so frames lost in an overrun are skipped as a microphone's would be.
 *    After the end of the file the card captures silence (not a loop); without a file it captures silence.
 *
 * 5. Hardware constraints (the kernel driver's hw constraints, refined by alsa-lib): S16_LE only, one rate
 *    (48000 or `rate`), the channel counts in `channels` (a stereo-only card refuses mono; pyalsaaudio's
 *    alsapcm_setup() ignores the failed set_channels() and takes what the card gives), period sizes of
 *    `period_min`..`period_max` frames (240..9600; enforced in bytes, so exact only for a single channel
 *    count) and `periods_min`..`periods_max` periods per buffer (2..16).
 *
 * 6. The volume: the `mixer_state` file is written by the companion control plugin (ctl_kiosk_card.c);
 *    it is read each time frames are consumed and scales them linearly by (value - min) / (max - min)
 *    per channel (0 when the channel's switch is off). A missing file means full volume.
 *
 * Configuration (pcm.NAME { type kiosk_card ... }):
 *   lock "PATH"            required; the substream lock is PATH.playback or PATH.capture
 *   played "PATH"          playback output (appended; created if missing); absent: discarded
 *   mixer_state "PATH"     volume state written by the ctl plugin; absent: no volume control
 *   capture_file "PATH"    capture input; absent: silence
 *   capture_channels INT   channels interleaved in capture_file (default 1)
 *   rate INT               the only rate (default 48000)
 *   channels INT | [ INT ... ]   accepted channel counts (default [ 1 2 ])
 *   nonblock_open BOOL     overrides defaults.pcm.nonblock for the open (absent: the default applies)
 *   period_min, period_max, periods_min, periods_max INT
 *
 * Not modelled: other formats and rates, mmap of a real DMA buffer (alsa-lib's ioplug emulates it),
 * stop_threshold/silence_threshold other than the defaults (the card always stops when its buffer runs
 * empty or full), timestamps, the latency of a DAC/ADC, clock drift between cards, suspend/resume, and a
 * card number (snd_pcm_info reports card -1, so softvol cannot attach to it and alsaaudio.cards() does not
 * list it). An underrun is noticed when alsa-lib next asks for the position (a transfer, avail, status,
 * a poll), not by a period interrupt: what is played is the same, but a drain that starts after the buffer
 * already ran dry completes normally instead of returning -EPIPE.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

#define KC_MAX_CHANNELS 8
#define KC_DEFAULT_RATE 48000

typedef struct {
	snd_pcm_ioplug_t io;
	pthread_mutex_t mutex;

	/* configuration */
	char *mixer_state;
	unsigned int rate;
	unsigned int capture_channels;

	/* descriptors */
	int lock_fd;
	int timer_fd;
	int played_fd;
	int capture_fd;

	/* setup (hw_params, sw_params) */
	unsigned int channels;
	snd_pcm_uframes_t buffer_size;
	snd_pcm_uframes_t avail_min;
	snd_pcm_uframes_t boundary;
	int16_t *ring; /* a copy of the playback buffer, indexed by frame position modulo buffer_size */

	/* the time line: frame k lasts from origin + k/rate to origin + (k+1)/rate */
	int origin_set;
	uint64_t origin_ns;
	uint64_t timeline; /* playback: frames put in the played file (played or silence) since origin */

	/* the current run (since the last prepare) */
	int running;
	int xrun;
	int64_t run_start; /* time line frame at which the frame at position 0 of this run plays */
	uint64_t hw;       /* frames consumed (playback) or produced (capture) since prepare */
} kiosk_pcm_t;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Time line frames elapsed at `t`. */
static int64_t frames_at(const kiosk_pcm_t *kc, uint64_t t)
{
	if (t <= kc->origin_ns)
		return 0;
	return (int64_t)((unsigned __int128)(t - kc->origin_ns) * kc->rate / 1000000000ull);
}

/* The first instant at which time line frame `frame` has begun (frames_at() >= frame). */
static uint64_t time_of(const kiosk_pcm_t *kc, int64_t frame)
{
	if (frame <= 0)
		return kc->origin_ns;
	unsigned __int128 ns = (unsigned __int128)frame * 1000000000ull + kc->rate - 1;
	return kc->origin_ns + (uint64_t)(ns / kc->rate);
}

static void arm_timer(kiosk_pcm_t *kc, uint64_t at_ns)
{
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (at_ns) {
		its.it_value.tv_sec = (time_t)(at_ns / 1000000000ull);
		its.it_value.tv_nsec = (long)(at_ns % 1000000000ull);
		if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
			its.it_value.tv_nsec = 1;
	}
	/* setting the timer also clears expirations not yet read */
	timerfd_settime(kc->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* ------------------------------------------------------------------------------------------ volume */

/* Per-channel gains from the mixer state file: (value - min) / (max - min), 0 when switched off. */
static void read_gains(const kiosk_pcm_t *kc, double *gains, unsigned int channels)
{
	long min = 0, max = 0, volume[KC_MAX_CHANNELS], on[KC_MAX_CHANNELS];
	int nvolume = 0, non = 0;
	char line[256];
	unsigned int c;
	FILE *f;

	for (c = 0; c < channels; c++)
		gains[c] = 1.0;
	if (!kc->mixer_state)
		return;
	f = fopen(kc->mixer_state, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *p = line, *end;
		long *dest = NULL;
		int *count = NULL;
		if (!strncmp(p, "min ", 4)) {
			min = strtol(p + 4, NULL, 10);
		} else if (!strncmp(p, "max ", 4)) {
			max = strtol(p + 4, NULL, 10);
		} else if (!strncmp(p, "volume ", 7)) {
			dest = volume, count = &nvolume, p += 7;
		} else if (!strncmp(p, "switch ", 7)) {
			dest = on, count = &non, p += 7;
		}
		if (!dest)
			continue;
		*count = 0;
		while (*count < KC_MAX_CHANNELS) {
			long v = strtol(p, &end, 10);
			if (end == p)
				break;
			dest[(*count)++] = v;
			p = end;
		}
	}
	fclose(f);
	if (max <= min || nvolume == 0)
		return;
	for (c = 0; c < channels; c++) {
		long v = volume[c < (unsigned int)nvolume ? c : (unsigned int)nvolume - 1];
		int sw = non ? on[c < (unsigned int)non ? c : (unsigned int)non - 1] != 0 : 1;
		if (v < min)
			v = min;
		if (v > max)
			v = max;
		gains[c] = sw ? (double)(v - min) / (double)(max - min) : 0.0;
	}
}

/* ------------------------------------------------------------------------------------------ the clock */

static void write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return; /* a test reading the file will see what is missing */
		}
		p += n;
		len -= (size_t)n;
	}
}

static void write_silence(kiosk_pcm_t *kc, uint64_t frames)
{
	static const char zeros[8192];
	uint64_t bytes = frames * kc->channels * 2;
	while (bytes > 0) {
		size_t n = bytes > sizeof(zeros) ? sizeof(zeros) : (size_t)bytes;
		write_all(kc->played_fd, zeros, n);
		bytes -= n;
	}
}

/* Playback: the card plays the buffered frames up to position `upto` (exclusive). */
static void play_until(kiosk_pcm_t *kc, uint64_t upto)
{
	double gains[KC_MAX_CHANNELS];
	int16_t chunk[1024 * KC_MAX_CHANNELS];
	unsigned int ch = kc->channels;
	int64_t first;

	if (upto <= kc->hw)
		return;
	if (kc->played_fd < 0 || !kc->ring) {
		kc->hw = upto;
		kc->timeline = (uint64_t)(kc->run_start + (int64_t)upto);
		return;
	}
	first = kc->run_start + (int64_t)kc->hw;
	if (first > (int64_t)kc->timeline)
		write_silence(kc, (uint64_t)first - kc->timeline);
	read_gains(kc, gains, ch);
	while (kc->hw < upto) {
		uint64_t n = upto - kc->hw, i;
		unsigned int c;
		if (n > 1024)
			n = 1024;
		for (i = 0; i < n; i++) {
			const int16_t *src = kc->ring + ((kc->hw + i) % kc->buffer_size) * ch;
			for (c = 0; c < ch; c++) {
				long v = lrint((double)src[c] * gains[c]);
				chunk[i * ch + c] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
			}
		}
		write_all(kc->played_fd, chunk, n * ch * 2);
		kc->hw += n;
	}
	kc->timeline = (uint64_t)(kc->run_start + (int64_t)kc->hw);
}

/*
 * Bring the card up to time `t`. Returns -EPIPE once the stream is in underrun/overrun.
 * Called with the mutex held.
 */
static int sync_to(kiosk_pcm_t *kc, uint64_t t)
{
	uint64_t appl, target;
	int64_t elapsed;

	if (!kc->running)
		return kc->xrun ? -EPIPE : 0;
	appl = kc->io.appl_ptr;
	elapsed = frames_at(kc, t) - kc->run_start;
	target = elapsed > 0 ? (uint64_t)elapsed : 0;
	if (target < kc->hw)
		target = kc->hw;
	if (kc->io.stream == SND_PCM_STREAM_PLAYBACK) {
		if (target >= appl) {
			/* the buffer ran empty: the card played all of it, then had nothing */
			play_until(kc, appl);
			kc->running = 0;
			if (kc->io.state == SND_PCM_STATE_DRAINING)
				return 0; /* a drain that completed, not an underrun */
			kc->xrun = 1;
			return -EPIPE;
		}
		play_until(kc, target);
	} else {
		if (target >= appl + kc->buffer_size) {
			/* the unread frames filled the buffer: the card stops, later frames are lost */
			kc->hw = appl + kc->buffer_size;
			kc->running = 0;
			kc->xrun = 1;
			return -EPIPE;
		}
		kc->hw = target;
	}
	return 0;
}

/* Stop the card at time `t` (drop, or prepare of a running stream): frames not yet played are dropped. */
static void stop_at(kiosk_pcm_t *kc, uint64_t t)
{
	if (kc->running && kc->io.stream == SND_PCM_STREAM_PLAYBACK) {
		uint64_t appl = kc->io.appl_ptr;
		int64_t elapsed = frames_at(kc, t) - kc->run_start;
		uint64_t target = elapsed > 0 ? (uint64_t)elapsed : 0;
		play_until(kc, target < appl ? target : appl);
	}
	kc->running = 0;
}

/* ------------------------------------------------------------------------------------------ callbacks */

static int kc_start(snd_pcm_ioplug_t *io)
{
	kiosk_pcm_t *kc = io->private_data;
	uint64_t t = now_ns();

	pthread_mutex_lock(&kc->mutex);
	if (!kc->origin_set) {
		kc->origin_set = 1;
		kc->origin_ns = t;
		kc->timeline = 0;
	}
	kc->run_start = frames_at(kc, t) - (int64_t)kc->hw;
	kc->running = 1;
	kc->xrun = 0;
	pthread_mutex_unlock(&kc->mutex);
	return 0;
}

static int kc_stop(snd_pcm_ioplug_t *io)
{
	kiosk_pcm_t *kc = io->private_data;

	pthread_mutex_lock(&kc->mutex);
	stop_at(kc, now_ns());
	kc->xrun = 0;
	arm_timer(kc, 0);
	pthread_mutex_unlock(&kc->mutex);
	return 0;
}

static snd_pcm_sframes_t kc_pointer(snd_pcm_ioplug_t *io)
{
	kiosk_pcm_t *kc = io->private_data;
	snd_pcm_sframes_t result;

	pthread_mutex_lock(&kc->mutex);
	result = sync_to(kc, now_ns());
	if (result >= 0)
		result = (snd_pcm_sframes_t)(kc->hw % kc->boundary);
	pthread_mutex_unlock(&kc->mutex);
	return result;
}

static void copy_in(kiosk_pcm_t *kc, const snd_pcm_channel_area_t *areas, snd_pcm_uframes_t offset,
		    snd_pcm_uframes_t size, uint64_t position)
{
	unsigned int c, ch = kc->channels;
	snd_pcm_uframes_t i;

	for (i = 0; i < size; i++) {
		int16_t *dst = kc->ring + ((position + i) % kc->buffer_size) * ch;
		for (c = 0; c < ch; c++) {
			const char *src = (const char *)areas[c].addr +
					  (areas[c].first + (offset + i) * areas[c].step) / 8;
			memcpy(&dst[c], src, 2);
		}
	}
}

static void copy_out(kiosk_pcm_t *kc, const snd_pcm_channel_area_t *areas, snd_pcm_uframes_t offset,
		     snd_pcm_uframes_t size, uint64_t position)
{
	unsigned int c, ch = kc->channels, fch = kc->capture_channels;
	int16_t frames[256 * KC_MAX_CHANNELS];
	snd_pcm_uframes_t done = 0;
	int64_t file_frame = kc->run_start + (int64_t)position;

	while (done < size) {
		snd_pcm_uframes_t n = size - done, i;
		ssize_t got = 0;
		if (n > 256)
			n = 256;
		memset(frames, 0, sizeof(frames));
		if (kc->capture_fd >= 0 && file_frame >= 0) {
			off_t at = (off_t)(file_frame + (int64_t)done) * fch * 2;
			got = pread(kc->capture_fd, frames, n * fch * 2, at);
			if (got < 0)
				got = 0;
			/* past the end of the file (got short): the rest stays silent */
			(void)got;
		}
		for (i = 0; i < n; i++) {
			for (c = 0; c < ch; c++) {
				char *dst = (char *)areas[c].addr +
					    (areas[c].first + (offset + done + i) * areas[c].step) / 8;
				memcpy(dst, &frames[i * fch + c % fch], 2);
			}
		}
		done += n;
	}
}

static snd_pcm_sframes_t kc_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
				     snd_pcm_uframes_t offset, snd_pcm_uframes_t size)
{
	kiosk_pcm_t *kc = io->private_data;

	pthread_mutex_lock(&kc->mutex);
	if (!kc->ring) {
		pthread_mutex_unlock(&kc->mutex);
		return -EBADFD;
	}
	if (io->stream == SND_PCM_STREAM_PLAYBACK)
		copy_in(kc, areas, offset, size, io->appl_ptr);
	else
		copy_out(kc, areas, offset, size, io->appl_ptr);
	pthread_mutex_unlock(&kc->mutex);
	return (snd_pcm_sframes_t)size;
}

static int kc_hw_params(snd_pcm_ioplug_t *io, snd_pcm_hw_params_t *params)
{
	kiosk_pcm_t *kc = io->private_data;
	snd_pcm_uframes_t boundary;
	int16_t *ring;

	(void)params;
	if (io->format != SND_PCM_FORMAT_S16_LE || io->channels < 1 || io->channels > KC_MAX_CHANNELS)
		return -EINVAL;
	ring = calloc(io->buffer_size * io->channels, sizeof(int16_t));
	if (!ring)
		return -ENOMEM;
	/* alsa-lib's boundary: the largest buffer_size * 2^n that fits */
	boundary = io->buffer_size;
	while (boundary * 2 <= LONG_MAX - io->buffer_size)
		boundary *= 2;
	pthread_mutex_lock(&kc->mutex);
	free(kc->ring);
	kc->ring = ring;
	kc->channels = io->channels;
	kc->buffer_size = io->buffer_size;
	kc->avail_min = io->period_size;
	kc->boundary = boundary;
	pthread_mutex_unlock(&kc->mutex);
	return 0;
}

static int kc_sw_params(snd_pcm_ioplug_t *io, snd_pcm_sw_params_t *params)
{
	kiosk_pcm_t *kc = io->private_data;
	snd_pcm_uframes_t avail_min = 0, boundary = 0;

	snd_pcm_sw_params_get_avail_min(params, &avail_min);
	snd_pcm_sw_params_get_boundary(params, &boundary);
	pthread_mutex_lock(&kc->mutex);
	if (avail_min)
		kc->avail_min = avail_min;
	if (boundary)
		kc->boundary = boundary;
	pthread_mutex_unlock(&kc->mutex);
	return 0;
}

static int kc_prepare(snd_pcm_ioplug_t *io)
{
	kiosk_pcm_t *kc = io->private_data;

	pthread_mutex_lock(&kc->mutex);
	stop_at(kc, now_ns());
	kc->hw = 0;
	kc->xrun = 0;
	arm_timer(kc, 0);
	pthread_mutex_unlock(&kc->mutex);
	return 0;
}

static int kc_pause(snd_pcm_ioplug_t *io, int enable)
{
	kiosk_pcm_t *kc = io->private_data;
	uint64_t t = now_ns();
	int err = 0;

	pthread_mutex_lock(&kc->mutex);
	if (enable) {
		err = sync_to(kc, t);
		if (err == 0)
			kc->running = 0;
	} else {
		kc->run_start = frames_at(kc, t) - (int64_t)kc->hw;
		kc->running = 1;
	}
	pthread_mutex_unlock(&kc->mutex);
	return err;
}

/*
 * Whether a waiter may go on, and if not, when to look again (0: not before something else happens).
 * Called with the mutex held, after sync_to().
 */
static int ready_or_when(kiosk_pcm_t *kc, uint64_t *wake_ns)
{
	uint64_t appl = kc->io.appl_ptr;
	int64_t need;

	*wake_ns = 0;
	if (kc->xrun)
		return 1;
	if (kc->io.stream == SND_PCM_STREAM_PLAYBACK) {
		uint64_t queued = appl > kc->hw ? appl - kc->hw : 0;
		if (kc->io.state == SND_PCM_STATE_DRAINING) {
			if (!kc->running || queued == 0)
				return 1;
			need = (int64_t)appl; /* drained when the position reaches the end */
		} else {
			if (kc->buffer_size - (queued < kc->buffer_size ? queued : kc->buffer_size) >= kc->avail_min)
				return 1;
			need = (int64_t)(appl + kc->avail_min - kc->buffer_size);
		}
	} else {
		if (kc->hw >= appl && kc->hw - appl >= kc->avail_min)
			return 1;
		need = (int64_t)(appl + kc->avail_min);
	}
	if (kc->running)
		*wake_ns = time_of(kc, kc->run_start + need);
	return 0;
}

static int kc_poll_descriptors_count(snd_pcm_ioplug_t *io)
{
	(void)io;
	return 1;
}

static int kc_poll_descriptors(snd_pcm_ioplug_t *io, struct pollfd *pfd, unsigned int space)
{
	kiosk_pcm_t *kc = io->private_data;
	uint64_t wake;

	if (space < 1)
		return 0;
	pthread_mutex_lock(&kc->mutex);
	sync_to(kc, now_ns());
	if (ready_or_when(kc, &wake))
		arm_timer(kc, 1); /* readable at once */
	else
		arm_timer(kc, wake);
	pthread_mutex_unlock(&kc->mutex);
	pfd->fd = kc->timer_fd;
	pfd->events = POLLIN;
	pfd->revents = 0;
	return 1;
}

static int kc_poll_revents(snd_pcm_ioplug_t *io, struct pollfd *pfd, unsigned int nfds, unsigned short *revents)
{
	kiosk_pcm_t *kc = io->private_data;
	uint64_t wake;
	int ready;

	if (nfds < 1)
		return -EINVAL;
	if (pfd[0].revents & (POLLERR | POLLNVAL)) {
		*revents = pfd[0].revents;
		return 0;
	}
	pthread_mutex_lock(&kc->mutex);
	sync_to(kc, now_ns());
	ready = ready_or_when(kc, &wake);
	arm_timer(kc, ready ? 1 : wake);
	pthread_mutex_unlock(&kc->mutex);
	*revents = 0;
	if (ready)
		*revents = io->stream == SND_PCM_STREAM_PLAYBACK ? POLLOUT : POLLIN;
	if (io->state == SND_PCM_STATE_XRUN)
		*revents |= POLLERR;
	return 0;
}

static int kc_close(snd_pcm_ioplug_t *io)
{
	kiosk_pcm_t *kc = io->private_data;

	pthread_mutex_lock(&kc->mutex);
	stop_at(kc, now_ns());
	pthread_mutex_unlock(&kc->mutex);
	if (kc->timer_fd >= 0)
		close(kc->timer_fd);
	if (kc->played_fd >= 0)
		close(kc->played_fd);
	if (kc->capture_fd >= 0)
		close(kc->capture_fd);
	if (kc->lock_fd >= 0)
		close(kc->lock_fd); /* releases the substream */
	pthread_mutex_destroy(&kc->mutex);
	free(kc->mixer_state);
	free(kc->ring);
	free(kc);
	return 0;
}

static void kc_dump(snd_pcm_ioplug_t *io, snd_output_t *out)
{
	snd_output_printf(out, "Kiosk emulated sound card PCM\n");
	if (io->pcm && io->state != SND_PCM_STATE_OPEN) {
		snd_output_printf(out, "Its setup is:\n");
		snd_pcm_dump_setup(io->pcm, out);
	}
}

static const snd_pcm_ioplug_callback_t kc_callback = {
	.start = kc_start,
	.stop = kc_stop,
	.pointer = kc_pointer,
	.transfer = kc_transfer,
	.close = kc_close,
	.hw_params = kc_hw_params,
	.sw_params = kc_sw_params,
	.prepare = kc_prepare,
	.pause = kc_pause,
	.poll_descriptors_count = kc_poll_descriptors_count,
	.poll_descriptors = kc_poll_descriptors,
	.poll_revents = kc_poll_revents,
	.dump = kc_dump,
};

/* ------------------------------------------------------------------------------------------ opening */

/* Take the substream: EBUSY at once if `wait` is 0, else sleep until the holder lets go. */
static int take_substream(const char *lock, snd_pcm_stream_t stream, int wait, int *fdp)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s.%s", lock, stream == SND_PCM_STREAM_PLAYBACK ? "playback" : "capture");
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) < 0) {
		int err = errno;
		close(fd);
		if (err == EWOULDBLOCK)
			return -EBUSY;
		return -err; /* EINTR: a signal interrupted the wait, as it does the kernel's */
	}
	*fdp = fd;
	return 0;
}

static int get_string(snd_config_t *n, const char *id, const char **value)
{
	if (snd_config_get_string(n, value) < 0) {
		SNDERR("kiosk_card: %s must be a string", id);
		return -EINVAL;
	}
	return 0;
}

static int get_uint(snd_config_t *n, const char *id, unsigned int *value)
{
	long v;
	if (snd_config_get_integer(n, &v) < 0 || v < 0 || v > INT_MAX) {
		SNDERR("kiosk_card: %s must be a non-negative integer", id);
		return -EINVAL;
	}
	*value = (unsigned int)v;
	return 0;
}

SND_PCM_PLUGIN_DEFINE_FUNC(kiosk_card)
{
	snd_config_iterator_t i, next;
	const char *lock = NULL, *played = NULL, *mixer_state = NULL, *capture_file = NULL;
	unsigned int rate = KC_DEFAULT_RATE, capture_channels = 1;
	unsigned int channel_list[KC_MAX_CHANNELS] = {1, 2}, nchannels = 2;
	unsigned int period_min = 240, period_max = 9600, periods_min = 2, periods_max = 16;
	unsigned int min_ch, max_ch, k;
	int nonblock = 1, err, wait;
	snd_config_t *n;
	kiosk_pcm_t *kc;
	static const unsigned int access_list[] = {
		SND_PCM_ACCESS_RW_INTERLEAVED,
		SND_PCM_ACCESS_MMAP_INTERLEAVED,
	};
	static const unsigned int format_list[] = {SND_PCM_FORMAT_S16_LE};

	/* as pcm_hw.c: non-blocking open unless the configuration says otherwise */
	if (snd_config_search(root, "defaults.pcm.nonblock", &n) >= 0) {
		err = snd_config_get_bool(n);
		if (err >= 0)
			nonblock = err;
	}

	snd_config_for_each(i, next, conf) {
		const char *id;
		n = snd_config_iterator_entry(i);
		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint"))
			continue;
		if (!strcmp(id, "lock")) {
			if ((err = get_string(n, id, &lock)) < 0)
				return err;
		} else if (!strcmp(id, "played")) {
			if ((err = get_string(n, id, &played)) < 0)
				return err;
		} else if (!strcmp(id, "mixer_state")) {
			if ((err = get_string(n, id, &mixer_state)) < 0)
				return err;
		} else if (!strcmp(id, "capture_file")) {
			if ((err = get_string(n, id, &capture_file)) < 0)
				return err;
		} else if (!strcmp(id, "capture_channels")) {
			if ((err = get_uint(n, id, &capture_channels)) < 0)
				return err;
		} else if (!strcmp(id, "rate")) {
			if ((err = get_uint(n, id, &rate)) < 0)
				return err;
		} else if (!strcmp(id, "period_min")) {
			if ((err = get_uint(n, id, &period_min)) < 0)
				return err;
		} else if (!strcmp(id, "period_max")) {
			if ((err = get_uint(n, id, &period_max)) < 0)
				return err;
		} else if (!strcmp(id, "periods_min")) {
			if ((err = get_uint(n, id, &periods_min)) < 0)
				return err;
		} else if (!strcmp(id, "periods_max")) {
			if ((err = get_uint(n, id, &periods_max)) < 0)
				return err;
		} else if (!strcmp(id, "nonblock_open")) {
			err = snd_config_get_bool(n);
			if (err < 0) {
				SNDERR("kiosk_card: nonblock_open must be a boolean");
				return -EINVAL;
			}
			nonblock = err;
		} else if (!strcmp(id, "channels")) {
			if (snd_config_get_type(n) == SND_CONFIG_TYPE_COMPOUND) {
				snd_config_iterator_t j, jnext;
				nchannels = 0;
				snd_config_for_each(j, jnext, n) {
					if (nchannels == KC_MAX_CHANNELS) {
						SNDERR("kiosk_card: too many channel counts");
						return -EINVAL;
					}
					err = get_uint(snd_config_iterator_entry(j), id, &channel_list[nchannels++]);
					if (err < 0)
						return err;
				}
			} else {
				if ((err = get_uint(n, id, &channel_list[0])) < 0)
					return err;
				nchannels = 1;
			}
		} else {
			SNDERR("kiosk_card: unknown field %s", id);
			return -EINVAL;
		}
	}
	if (!lock) {
		SNDERR("kiosk_card: lock is not defined");
		return -EINVAL;
	}
	if (!nchannels || rate == 0 || capture_channels < 1 || capture_channels > KC_MAX_CHANNELS ||
	    period_min < 1 || period_max < period_min || periods_min < 2 || periods_max < periods_min) {
		SNDERR("kiosk_card: invalid rate, channels, capture_channels or period bounds");
		return -EINVAL;
	}
	min_ch = max_ch = channel_list[0];
	for (k = 0; k < nchannels; k++) {
		if (channel_list[k] < 1 || channel_list[k] > KC_MAX_CHANNELS) {
			SNDERR("kiosk_card: channel counts must be 1..%d", KC_MAX_CHANNELS);
			return -EINVAL;
		}
		if (channel_list[k] < min_ch)
			min_ch = channel_list[k];
		if (channel_list[k] > max_ch)
			max_ch = channel_list[k];
	}

	kc = calloc(1, sizeof(*kc));
	if (!kc)
		return -ENOMEM;
	pthread_mutex_init(&kc->mutex, NULL);
	kc->lock_fd = kc->timer_fd = kc->played_fd = kc->capture_fd = -1;
	kc->rate = rate;
	kc->capture_channels = capture_channels;
	kc->channels = min_ch;
	kc->buffer_size = 1;
	kc->boundary = 1;

	/* The substream first: a busy card fails before anything else happens. */
	wait = !(mode & SND_PCM_NONBLOCK) && !nonblock;
	err = take_substream(lock, stream, wait, &kc->lock_fd);
	if (err < 0)
		goto fail;

	if (mixer_state && !(kc->mixer_state = strdup(mixer_state))) {
		err = -ENOMEM;
		goto fail;
	}
	kc->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (kc->timer_fd < 0) {
		err = -errno;
		goto fail;
	}
	if (stream == SND_PCM_STREAM_PLAYBACK && played) {
		kc->played_fd = open(played, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
		if (kc->played_fd < 0) {
			err = -errno;
			SNDERR("kiosk_card: cannot open %s", played);
			goto fail;
		}
	}
	if (stream == SND_PCM_STREAM_CAPTURE && capture_file) {
		kc->capture_fd = open(capture_file, O_RDONLY | O_CLOEXEC);
		if (kc->capture_fd < 0) {
			err = -errno;
			SNDERR("kiosk_card: cannot open %s", capture_file);
			goto fail;
		}
	}

	kc->io.version = SND_PCM_IOPLUG_VERSION;
	kc->io.name = "Kiosk emulated sound card";
	kc->io.callback = &kc_callback;
	kc->io.private_data = kc;
	kc->io.poll_fd = kc->timer_fd;
	kc->io.poll_events = POLLIN;
	kc->io.mmap_rw = 0;
	kc->io.flags = SND_PCM_IOPLUG_FLAG_MONOTONIC | SND_PCM_IOPLUG_FLAG_BOUNDARY_WA;

	err = snd_pcm_ioplug_create(&kc->io, name, stream, mode);
	if (err < 0)
		goto fail;
	/* from here on, closing the PCM frees kc */
	if ((err = snd_pcm_ioplug_set_param_list(&kc->io, SND_PCM_IOPLUG_HW_ACCESS, 2, access_list)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(&kc->io, SND_PCM_IOPLUG_HW_FORMAT, 1, format_list)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(&kc->io, SND_PCM_IOPLUG_HW_CHANNELS, nchannels, channel_list)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(&kc->io, SND_PCM_IOPLUG_HW_RATE, 1, &rate)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&kc->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES,
						   period_min * 2 * min_ch, period_max * 2 * max_ch)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&kc->io, SND_PCM_IOPLUG_HW_PERIODS,
						   periods_min, periods_max)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&kc->io, SND_PCM_IOPLUG_HW_BUFFER_BYTES,
						   period_min * 2 * min_ch * periods_min,
						   period_max * 2 * max_ch * periods_max)) < 0) {
		snd_pcm_ioplug_delete(&kc->io);
		return err;
	}
	*pcmp = kc->io.pcm;
	return 0;

fail:
	if (kc->timer_fd >= 0)
		close(kc->timer_fd);
	if (kc->played_fd >= 0)
		close(kc->played_fd);
	if (kc->capture_fd >= 0)
		close(kc->capture_fd);
	if (kc->lock_fd >= 0)
		close(kc->lock_fd);
	pthread_mutex_destroy(&kc->mutex);
	free(kc->mixer_state);
	free(kc);
	return err;
}

SND_PCM_PLUGIN_SYMBOL(kiosk_card);
