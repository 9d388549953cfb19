/* relay._tsmux: TsMuxer.part()'s work in C, for the CPU it saves on every packaged stream.
 *
 * mux_part(packets, tables, cc, parameter_sets, length_size, adts, pcr_pid, audio_delay,
 *          audio_random_access) -> bytes | None
 *
 * Lays out one part or segment exactly as relay/mpegts.py's TsMuxer does (PAT and PMT first when
 * ``tables`` is given, each frame's PES as it comes, AAC frames gathered into PES of up to
 * ``audio_delay`` (90 kHz) or MAX_AUDIO_PES bytes, what is gathered written at the end), and returns
 * the TS packets. The Python muxer is the reference: tests check that both give the same bytes.
 *
 *   packets          list of relay.packet.Packet (kind, timestamp, payload as bytes, keyframe)
 *   tables           bytes: the PAT and PMT sections, each padded to 184 bytes; None for none
 *   cc               bytearray(4): continuity counters of PAT, PMT, video and audio; updated
 *                    only when the call succeeds
 *   parameter_sets   bytes: Annex-B SPS/PPS put before every keyframe; None: no AVC config yet
 *                    (video frames are left out, as the Python muxer does)
 *   length_size      the NAL unit length field's size (1 to 4)
 *   adts             bytes (profile, rate index, channels); None: no AAC config yet
 *   pcr_pid          the PID whose PES carry the PCR
 *   audio_delay      how long AAC frames are gathered, on the 90 kHz clock
 *   audio_random_access  whether audio PES are marked as random access points (no video)
 *
 * Returns None, having changed nothing, for what it leaves to the Python muxer: a payload that is not
 * a bytes object, a kind or timestamp that is not an int of 64 bits, an AAC frame or PES too long for
 * its length fields.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TSMUX_VERSION 3 /* relay/formats/mpegts.py checks it: a stale build is not used */

#define TS_SIZE 188
#define PAYLOAD 184
#define PAT_PID 0
#define PMT_PID 0x1000
#define VIDEO_PID 0x100
#define AUDIO_PID 0x101
#define KIND_AUDIO 8
#define KIND_VIDEO 9
#define MAX_AUDIO_PES 60000
/* An ADTS header says a frame's length, header included, in 13 bits (aac.MAX_ADTS_FRAME + 7). */
#define MAX_ADTS_LENGTH 0x1FFF
#define PCR_ROOM (PAYLOAD - 8)

static PyObject *str_kind, *str_timestamp, *str_payload, *str_keyframe;

typedef struct {
    uint8_t *data;
    Py_ssize_t size, capacity;
} Buffer;

static int buffer_reserve(Buffer *b, Py_ssize_t more) {
    if (b->size + more <= b->capacity)
        return 0;
    Py_ssize_t capacity = b->capacity ? b->capacity : 4096;
    while (capacity < b->size + more)
        capacity *= 2;
    uint8_t *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static inline void put(Buffer *b, const void *src, Py_ssize_t n) {
    memcpy(b->data + b->size, src, n);
    b->size += n;
}

/* A run of bytes of a PES: a PES is packetized from its pieces (headers, start codes, NAL units as
 * they are in the publisher's frame), so that its media is copied once, into the TS packets. */
typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
} Piece;

typedef struct {
    PyObject *out;      /* the bytes being written: sized for the whole part up front */
    Py_ssize_t out_size;
    Piece *pieces;      /* the video PES being packetized */
    Py_ssize_t pieces_capacity;
    uint8_t video_head[19];
    Buffer audio;       /* gathered audio PES: 14 header bytes, then ADTS header + frame, ... */
    int64_t audio_pts;
    int pcr_pid;
    uint8_t cc[4];
} Muxer;

static int cc_index(int pid) {
    switch (pid) {
    case PAT_PID: return 0;
    case PMT_PID: return 1;
    case VIDEO_PID: return 2;
    default: return 3;
    }
}

static int out_reserve(Muxer *m, Py_ssize_t more) {
    Py_ssize_t capacity = PyBytes_GET_SIZE(m->out);
    if (m->out_size + more <= capacity)
        return 0;
    while (capacity < m->out_size + more)
        capacity *= 2;
    return _PyBytes_Resize(&m->out, capacity);
}

/* A PTS or DTS field (33 bits with marker bits) in 5 bytes. */
static void stamp(uint8_t *p, int marker, int64_t value) {
    uint64_t v = (uint64_t)value & ((UINT64_C(1) << 33) - 1);
    unsigned middle = (unsigned)(v >> 15) & 0x7FFF, low = (unsigned)v & 0x7FFF;
    p[0] = (uint8_t)(marker << 4 | (unsigned)(v >> 30) << 1 | 1);
    p[1] = (uint8_t)(middle >> 7);
    p[2] = (uint8_t)((middle & 0x7F) << 1 | 1);
    p[3] = (uint8_t)(low >> 7);
    p[4] = (uint8_t)((low & 0x7F) << 1 | 1);
}

static inline uint8_t *packet_head(uint8_t *p, int pid, int start, int adaptation, int cc) {
    p[0] = 0x47;
    p[1] = (uint8_t)((start ? 0x40 : 0) | pid >> 8);
    p[2] = (uint8_t)(pid & 0xFF);
    p[3] = (uint8_t)((adaptation ? 0x30 : 0x10) | (cc & 0x0F));
    return p + 4;
}

/* An adaptation field of `length` bytes after its length byte: `fields` first, or a flags byte of 0,
 * then 0xFF stuffing. */
static uint8_t *stuffed(uint8_t *p, const uint8_t *fields, int fields_size, int length) {
    *p++ = (uint8_t)length;
    if (length <= 0)
        return p;
    if (fields_size) {
        memcpy(p, fields, fields_size);
    } else {
        fields_size = 1;
        *p = 0;
    }
    memset(p + fields_size, 0xFF, length - fields_size);
    return p + length;
}

/* Where packetizing a PES has got to in its pieces. */
typedef struct {
    const Piece *piece;
    Py_ssize_t offset;
} Cursor;

/* Copies the next `n` bytes of the pieces to `dst`; returns the end of the copy. */
static inline uint8_t *take(Cursor *c, uint8_t *dst, Py_ssize_t n) {
    while (n > 0) {
        Py_ssize_t available = c->piece->size - c->offset;
        if (available > n) {
            memcpy(dst, c->piece->data + c->offset, n);
            c->offset += n;
            return dst + n;
        }
        memcpy(dst, c->piece->data + c->offset, available);
        dst += available;
        n -= available;
        c->piece++;
        c->offset = 0;
    }
    return dst;
}

/* The TS packets of one PES of `total` bytes, made of `pieces` (TsMuxer._write_pes). */
static int write_pes(Muxer *m, int pid, const Piece *pieces, Py_ssize_t total, int64_t dts, int random_access) {
    uint8_t fields[7];
    int fields_size = 0;
    if (pid == m->pcr_pid) {
        uint64_t pcr = dts >= 300 * 90 ? (uint64_t)(dts - 300 * 90) : 0;
        uint32_t base = (uint32_t)(pcr >> 1);
        fields[0] = random_access ? 0x50 : 0x10;
        fields[1] = (uint8_t)(base >> 24);
        fields[2] = (uint8_t)(base >> 16);
        fields[3] = (uint8_t)(base >> 8);
        fields[4] = (uint8_t)base;
        fields[5] = (uint8_t)((pcr & 1) << 7 | 0x7E);
        fields[6] = 0;
        fields_size = 7;
    } else if (random_access) {
        fields[0] = 0x40;
        fields_size = 1;
    }
    Py_ssize_t room = fields_size ? PAYLOAD - 1 - fields_size : PAYLOAD;
    Py_ssize_t count = total < room ? 1 : 2 + (total - room) / PAYLOAD;
    if (out_reserve(m, count * TS_SIZE) < 0) /* only if the part's bound was wrong */
        return -1;
    int ci = cc_index(pid);
    int cc = m->cc[ci];
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(m->out) + m->out_size;
    uint8_t *start = p;
    Cursor data = {pieces, 0};
    if (total < room) { /* the whole PES fits in one packet: stuff its adaptation field */
        p = packet_head(p, pid, 1, 1, cc++);
        p = stuffed(p, fields, fields_size, (int)(PAYLOAD - 1 - total));
        p = take(&data, p, total);
    } else {
        p = packet_head(p, pid, 1, fields_size, cc++);
        if (fields_size) {
            *p++ = (uint8_t)fields_size;
            memcpy(p, fields, fields_size);
            p += fields_size;
        }
        p = take(&data, p, room);
        Py_ssize_t rest = total - room;
        for (; rest >= PAYLOAD; rest -= PAYLOAD) {
            p = packet_head(p, pid, 0, 0, cc++);
            p = take(&data, p, PAYLOAD);
        }
        if (rest) { /* the last packet is stuffed: its adaptation field goes before the PES's last bytes */
            p = packet_head(p, pid, 0, 1, cc++);
            p = stuffed(p, NULL, 0, (int)(PAYLOAD - 1 - rest));
            p = take(&data, p, rest);
        }
    }
    m->cc[ci] = (uint8_t)(cc & 0x0F);
    m->out_size += p - start;
    return 0;
}

static int flush_audio(Muxer *m, int random_access) {
    if (m->audio.size <= 14)
        return 0;
    Py_ssize_t size = m->audio.size - 14;
    if (8 + size > 0xFFFF)
        return 1; /* too long for the PES length field: the Python muxer's to say */
    uint8_t *h = m->audio.data;
    static const uint8_t lead[4] = {0, 0, 1, 0xC0};
    memcpy(h, lead, 4);
    h[4] = (uint8_t)((8 + size) >> 8);
    h[5] = (uint8_t)(8 + size);
    h[6] = 0x80;
    h[7] = 0x80;
    h[8] = 0x05;
    stamp(h + 9, 2, m->audio_pts);
    Piece pes = {m->audio.data, m->audio.size};
    int r = write_pes(m, AUDIO_PID, &pes, m->audio.size, m->audio_pts, random_access);
    m->audio.size = 14;
    return r;
}

static int add_piece(Muxer *m, Py_ssize_t *count, const uint8_t *data, Py_ssize_t size) {
    if (*count == m->pieces_capacity) {
        Py_ssize_t capacity = m->pieces_capacity ? 2 * m->pieces_capacity : 64;
        Piece *pieces = PyMem_Realloc(m->pieces, capacity * sizeof(Piece));
        if (pieces == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        m->pieces = pieces;
        m->pieces_capacity = capacity;
    }
    m->pieces[(*count)++] = (Piece){data, size};
    return 0;
}

/* One FLV H.264 frame's PES as pieces in m->pieces: its header, our AUD, SPS/PPS before a keyframe,
 * the NAL units but the publisher's AUDs, each after a start code. Returns the PES's size, or -1. */
static Py_ssize_t video_pes(Muxer *m, const uint8_t *data, Py_ssize_t end, int length_size, int64_t dts,
                            int32_t cts, const uint8_t *params, Py_ssize_t params_size) {
    static const uint8_t aud[6] = {0, 0, 0, 1, 0x09, 0xF0};
    static const uint8_t start_code[4] = {0, 0, 0, 1};
    static const uint8_t lead[7] = {0, 0, 1, 0xE0, 0, 0, 0x80};
    uint8_t *h = m->video_head;
    memcpy(h, lead, 7);
    Py_ssize_t head_size;
    if (cts) {
        h[7] = 0xC0;
        h[8] = 0x0A;
        stamp(h + 9, 3, dts + (int64_t)cts * 90);
        stamp(h + 14, 1, dts);
        head_size = 19;
    } else {
        h[7] = 0x80;
        h[8] = 0x05;
        stamp(h + 9, 2, dts);
        head_size = 14;
    }
    Py_ssize_t count = 0, total = head_size + 6 + params_size;
    if (add_piece(m, &count, h, head_size) < 0 || add_piece(m, &count, aud, 6) < 0)
        return -1;
    if (params_size && add_piece(m, &count, params, params_size) < 0)
        return -1;
    Py_ssize_t pos = 0;
    while (pos + length_size <= end) {
        uint64_t length = 0;
        for (int i = 0; i < length_size; i++)
            length = length << 8 | data[pos + i];
        pos += length_size;
        Py_ssize_t available = end - pos;
        Py_ssize_t nal = length < (uint64_t)available ? (Py_ssize_t)length : available;
        if (nal > 0 && (data[pos] & 0x1F) != 9) {
            if (add_piece(m, &count, start_code, 4) < 0 || add_piece(m, &count, data + pos, nal) < 0)
                return -1;
            total += 4 + nal;
        }
        if (length >= (uint64_t)available)
            break;
        pos += (Py_ssize_t)length;
    }
    return total;
}

typedef struct {
    const uint8_t *params; /* SPS/PPS (Annex-B) before keyframes; NULL: no AVC config */
    Py_ssize_t params_size;
    int length_size;
    const uint8_t *adts; /* profile, rate index, channels; NULL: no AAC config */
    int64_t audio_delay;
    int audio_random_access;
} Config;

/* 1: *value set; 0: not an int that fits in 64 bits (left to the Python muxer); -1: error set. */
static int int_attr(PyObject *obj, PyObject *name, long long *value) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int overflow = 0;
    *value = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &overflow) : (overflow = 1, 0);
    Py_DECREF(v);
    if (*value == -1 && PyErr_Occurred())
        return -1;
    return !overflow;
}

static int mux_video(Muxer *m, PyObject *packet, const uint8_t *payload, Py_ssize_t size, int64_t dts,
                     const Config *c) {
    if (c->params == NULL || size < 5)
        return 0;
    int32_t cts;
    const uint8_t *data;
    Py_ssize_t data_size;
    if ((payload[0] & 0x0F) == 7 && payload[1] == 1) { /* legacy FLV AVC NAL units */
        cts = (int32_t)((uint32_t)payload[2] << 16 | (uint32_t)payload[3] << 8 | payload[4]);
        data = payload + 5;
        data_size = size - 5;
    } else if ((payload[0] & 0x80) && memcmp(payload + 1, "avc1", 4) == 0) { /* Enhanced RTMP */
        int packet_type = payload[0] & 0x0F;
        if (packet_type == 3) { /* CodedFramesX: no composition offset */
            cts = 0;
            data = payload + 5;
            data_size = size - 5;
        } else if (packet_type == 1 && size >= 8) { /* CodedFrames */
            cts = (int32_t)((uint32_t)payload[5] << 16 | (uint32_t)payload[6] << 8 | payload[7]);
            data = payload + 8;
            data_size = size - 8;
        } else {
            return 0; /* a sequence start or end, or metadata: no frame */
        }
    } else {
        return 0; /* a sequence header, or not H.264 */
    }
    if (cts & 0x800000)
        cts -= 0x1000000;
    PyObject *key = PyObject_GetAttr(packet, str_keyframe);
    if (key == NULL)
        return -1;
    int keyframe = PyObject_IsTrue(key);
    Py_DECREF(key);
    if (keyframe < 0)
        return -1;
    Py_ssize_t total = video_pes(m, data, data_size, c->length_size, dts, cts, c->params, keyframe ? c->params_size : 0);
    if (total < 0)
        return -1;
    return write_pes(m, VIDEO_PID, m->pieces, total, dts, keyframe);
}

static int mux_audio(Muxer *m, const uint8_t *payload, Py_ssize_t size, int64_t pts, const Config *c) {
    if (c->adts == NULL || size < 3 || payload[0] >> 4 != 10 || payload[1] != 1)
        return 0;
    Py_ssize_t frame = size - 2;
    Py_ssize_t length = frame + 7;
    if (length > MAX_ADTS_LENGTH)
        return 0; /* no AAC frame, and no ADTS header can say its length: left out, as in Python */
    if (m->audio.size == 14)
        m->audio_pts = pts;
    if (buffer_reserve(&m->audio, length) < 0)
        return -1;
    const uint8_t *adts = c->adts;
    uint8_t header[7] = {
        0xFF,
        0xF1,
        (uint8_t)(adts[0] << 6 | adts[1] << 2 | adts[2] >> 2),
        (uint8_t)((adts[2] & 3) << 6 | length >> 11),
        (uint8_t)(length >> 3),
        (uint8_t)((length & 7) << 5 | 0x1F),
        0xFC,
    };
    put(&m->audio, header, 7);
    put(&m->audio, payload + 2, frame);
    if (pts - m->audio_pts >= c->audio_delay || m->audio.size - 14 >= MAX_AUDIO_PES)
        return flush_audio(m, c->audio_random_access);
    return 0;
}

/* 0: done; 1: leave this part to the Python muxer; -1: error set. */
static int mux_packet(Muxer *m, PyObject *packet, const Config *c) {
    long long kind, timestamp;
    int r = int_attr(packet, str_kind, &kind);
    if (r <= 0)
        return r < 0 ? -1 : 1;
    if (kind != KIND_VIDEO && kind != KIND_AUDIO)
        return 0;
    r = int_attr(packet, str_timestamp, &timestamp);
    if (r <= 0)
        return r < 0 ? -1 : 1;
    if (timestamp > INT64_MAX / 90 || timestamp < INT64_MIN / 90)
        return 1;
    PyObject *payload = PyObject_GetAttr(packet, str_payload);
    if (payload == NULL)
        return -1;
    if (!PyBytes_CheckExact(payload)) {
        r = 1;
    } else {
        const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(payload);
        Py_ssize_t size = PyBytes_GET_SIZE(payload);
        r = kind == KIND_VIDEO ? mux_video(m, packet, data, size, (int64_t)timestamp * 90, c)
                               : mux_audio(m, data, size, (int64_t)timestamp * 90, c);
    }
    Py_DECREF(payload);
    return r;
}

/* At most how many bytes the part's packets can give (for every frame, as if it were video with the
 * most start codes its length fields allow), so that the part is allocated once. */
static Py_ssize_t part_bound(PyObject *packets, int length_size, Py_ssize_t params_size) {
    Py_ssize_t count = 2; /* PAT and PMT */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(packets); i++) {
        PyObject *payload = PyObject_GetAttr(PyTuple_GET_ITEM(packets, i), str_payload);
        if (payload == NULL)
            return -1;
        Py_ssize_t size = PyBytes_Check(payload) ? PyBytes_GET_SIZE(payload) : 0;
        Py_DECREF(payload);
        Py_ssize_t pes = 25 + params_size + size + (length_size < 4 ? 3 * (size / (length_size + 1) + 1) : 0);
        count += pes / PCR_ROOM + 2;
    }
    return count * TS_SIZE;
}

static PyObject *mux_part(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *packet_list, *tables, *params_obj, *adts_obj;
    Py_buffer cc;
    int length_size, pcr_pid, audio_random_access;
    long long audio_delay;
    if (!PyArg_ParseTuple(args, "O!Ow*OiOiLp", &PyList_Type, &packet_list, &tables, &cc, &params_obj, &length_size,
                          &adts_obj, &pcr_pid, &audio_delay, &audio_random_access))
        return NULL;
    /* A tuple of the packets, holding a reference to each: attribute lookups run Python code, which could
     * change the list (and free its items, or outgrow the bound) while the part is muxed. */
    PyObject *packets = PyList_AsTuple(packet_list);
    if (packets == NULL) {
        PyBuffer_Release(&cc);
        return NULL;
    }
    PyObject *result = NULL;
    Muxer m = {0};
    m.pcr_pid = pcr_pid;
    const uint8_t *params = NULL, *adts = NULL;
    Py_ssize_t params_size = 0;
    if (cc.len != 4) {
        PyErr_SetString(PyExc_ValueError, "cc must be 4 bytes");
        goto done;
    }
    if (length_size < 1 || length_size > 4) {
        PyErr_SetString(PyExc_ValueError, "length_size must be 1 to 4");
        goto done;
    }
    if (params_obj != Py_None) {
        if (!PyBytes_Check(params_obj)) {
            PyErr_SetString(PyExc_TypeError, "parameter_sets must be bytes or None");
            goto done;
        }
        params = (const uint8_t *)PyBytes_AS_STRING(params_obj);
        params_size = PyBytes_GET_SIZE(params_obj);
    }
    if (adts_obj != Py_None) {
        if (!PyBytes_Check(adts_obj) || PyBytes_GET_SIZE(adts_obj) != 3) {
            PyErr_SetString(PyExc_TypeError, "adts must be 3 bytes or None");
            goto done;
        }
        adts = (const uint8_t *)PyBytes_AS_STRING(adts_obj);
    }
    if (tables != Py_None && (!PyBytes_Check(tables) || PyBytes_GET_SIZE(tables) != 2 * PAYLOAD)) {
        PyErr_SetString(PyExc_TypeError, "tables must be 368 bytes or None");
        goto done;
    }
    memcpy(m.cc, cc.buf, 4);
    Py_ssize_t bound = part_bound(packets, length_size, params_size);
    if (bound < 0)
        goto done;
    m.out = PyBytes_FromStringAndSize(NULL, bound);
    if (m.out == NULL || buffer_reserve(&m.audio, 4096) < 0)
        goto done;
    m.audio.size = 14; /* room for the PES header, written when the PES is */
    if (tables != Py_None) {
        const uint8_t *sections = (const uint8_t *)PyBytes_AS_STRING(tables);
        static const int pids[2] = {PAT_PID, PMT_PID};
        for (int i = 0; i < 2; i++) {
            uint8_t *p = (uint8_t *)PyBytes_AS_STRING(m.out) + m.out_size;
            p = packet_head(p, pids[i], 1, 0, m.cc[i]);
            memcpy(p, sections + i * PAYLOAD, PAYLOAD);
            m.cc[i] = (m.cc[i] + 1) & 0x0F;
            m.out_size += TS_SIZE;
        }
    }
    Config config = {params, params_size, length_size, adts, audio_delay, audio_random_access};
    int r = 0;
    for (Py_ssize_t i = 0; r == 0 && i < PyTuple_GET_SIZE(packets); i++)
        r = mux_packet(&m, PyTuple_GET_ITEM(packets, i), &config);
    if (r == 0)
        r = flush_audio(&m, audio_random_access);
    if (r < 0)
        goto done;
    if (r > 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (_PyBytes_Resize(&m.out, m.out_size) < 0)
        goto done;
    memcpy(cc.buf, m.cc, 4);
    result = m.out;
    m.out = NULL;
done:
    Py_DECREF(packets);
    Py_XDECREF(m.out);
    PyMem_Free(m.pieces);
    PyMem_Free(m.audio.data);
    PyBuffer_Release(&cc);
    return result;
}

static PyMethodDef methods[] = {
    {"mux_part", mux_part, METH_VARARGS, "One part's TS packets (see relay/formats/_tsmux.c); None: use the Python muxer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "relay.formats._tsmux", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__tsmux(void) {
    str_kind = PyUnicode_InternFromString("kind");
    str_timestamp = PyUnicode_InternFromString("timestamp");
    str_payload = PyUnicode_InternFromString("payload");
    str_keyframe = PyUnicode_InternFromString("keyframe");
    if (!str_kind || !str_timestamp || !str_payload || !str_keyframe)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", TSMUX_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
