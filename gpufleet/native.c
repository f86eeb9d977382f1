/* gpufleet._native: the collector's hottest loops in C, each a fast path of Python code that stays
 * the definition.
 *
 *   gpu_rows(rows, field_count, models, keys, GpuWindow, Holder)
 *       wire._decode_gpu_rows: a telemetry message's GPU rows checked and made into GpuWindow
 *       tuples. Returns None ("declined") for anything it does not accept exactly as the Python
 *       code would: the caller then runs that code, which accepts the same or raises the
 *       Rejected that names the fault. So C never decides what is an error, nor says why.
 *   LineFormat(heads, suffixes, positions).gpu_lines(plans, gpus, tail)
 *       telemetry.FieldFormat: the `gpu` lines of a message, head + `name=value<suffix>,` for
 *       each present field + tail. Returns None when a text is not ASCII or a value is not an
 *       int within 64 bits (wire validation makes both impossible; the Python path then runs).
 *   tenant_lines(plans, gpus, window_ms, energy_at, util_at, stamp, split)
 *       TelemetryLines.tenant_lines for each GPU of a window without MIG: the window, busy time
 *       and energy split among its workloads (attribute.hamilton, exact), summed per tenant, a
 *       `tenant_usage` line each. A GPU it does not take (MIG, a text not ASCII, a negative
 *       energy, more than MAX_KEYS workloads) goes to split(plan, gpu), the Python path.
 *   known_workloads(raw, valid)
 *       wire._decode_workload_list for a message whose every identity equals the one last found
 *       valid for its key (the same jobs come back every window); None for anything else.
 *   find_plans(gpus, numbers, plans)
 *       TelemetryLines.plans' lookup: each GPU's key (index, UUID, model, its holders' or idle
 *       owners' identity numbers) and the plan kept under it; the plans still to make, Python makes.
 *
 * Why C: in Python these were ~15 of the collector's ~25 µs per GPU-window with 1-3 workloads a
 * GPU (bench/stages.py), spent on a type check, a range check or an int-to-text per value, 41
 * values a GPU. Equality with the Python path is tested on random and hostile input
 * (tests/unit/test_native.py, and test_telemetry.py against the readable definition).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* wire.py's limits; tests/unit/test_native.py checks that they agree. */
#define MAX_GPUS 256
#define MAX_HOLDERS 256
#define MAX_UUID_CHARS 96
#define MAX_HOLDER_SM 10000
#define MAX_HOLDER_MEMORY (1LL << 48)
#define MAX_ABS_INT 0x7fffffffffffffffLL /* InfluxDB integers: signed 64-bit, -MAX..MAX */
#define DIGITS_MAX 20                     /* "-9223372036854775807" */

/* ------------------------------------------------------------------------------ checks */

/* An exact int (bool is a subclass, so excluded) in lo..hi, into *out; 0 when it is not. */
static int int_within(PyObject *value, long long lo, long long hi, long long *out)
{
    int overflow;
    long long number;
    if (!PyLong_CheckExact(value))
        return 0;
    number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (number < lo || number > hi)
        return 0;
    *out = number;
    return 1;
}

static int none_or_int_within(PyObject *value, long long lo, long long hi)
{
    long long ignored;
    return value == Py_None || int_within(value, lo, hi, &ignored);
}

static int is_alnum(Py_UCS1 c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* wire._UUID: [A-Za-z0-9][A-Za-z0-9-]{0,95}, an exact str. */
static int is_uuid(PyObject *value)
{
    Py_ssize_t length, i;
    const Py_UCS1 *chars;
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value))
        return 0;
    length = PyUnicode_GET_LENGTH(value);
    if (length < 1 || length > MAX_UUID_CHARS)
        return 0;
    chars = PyUnicode_1BYTE_DATA(value);
    if (!is_alnum(chars[0]))
        return 0;
    for (i = 1; i < length; i++)
        if (!is_alnum(chars[i]) && chars[i] != '-')
            return 0;
    return 1;
}

/* A row's values: a list of field_count items, each None or an int within 64 bits. */
static int values_ok(PyObject *values, Py_ssize_t field_count)
{
    Py_ssize_t i;
    if (!PyList_CheckExact(values) || PyList_GET_SIZE(values) != field_count)
        return 0;
    for (i = 0; i < field_count; i++)
        if (!none_or_int_within(PyList_GET_ITEM(values, i), -MAX_ABS_INT, MAX_ABS_INT))
            return 0;
    return 1;
}

/* [workload#, sm_util_centi, mem_bytes, ...]: at most MAX_HOLDERS triples. */
static int holders_ok(PyObject *holders, Py_ssize_t key_count)
{
    Py_ssize_t length, i;
    long long ignored;
    if (!PyList_CheckExact(holders))
        return 0;
    length = PyList_GET_SIZE(holders);
    if (length > 3 * MAX_HOLDERS || length % 3)
        return 0;
    for (i = 0; i < length; i += 3)
        if (!int_within(PyList_GET_ITEM(holders, i), 0, key_count - 1, &ignored)
            || !none_or_int_within(PyList_GET_ITEM(holders, i + 1), 0, MAX_HOLDER_SM)
            || !none_or_int_within(PyList_GET_ITEM(holders, i + 2), 0, MAX_HOLDER_MEMORY))
            return 0;
    return 1;
}

static int owners_ok(PyObject *owners, Py_ssize_t key_count)
{
    Py_ssize_t i;
    long long ignored;
    if (!PyList_CheckExact(owners) || PyList_GET_SIZE(owners) > MAX_HOLDERS)
        return 0;
    for (i = 0; i < PyList_GET_SIZE(owners); i++)
        if (!int_within(PyList_GET_ITEM(owners, i), 0, key_count - 1, &ignored))
            return 0;
    return 1;
}

/* wire._decode_mig: [instance id 0..63, slices, GPU slices], 1 <= slices <= GPU slices <= 8. */
static int mig_ok(PyObject *mig)
{
    long long instance, slices, gpu_slices;
    return PyList_CheckExact(mig) && PyList_GET_SIZE(mig) == 3
           && int_within(PyList_GET_ITEM(mig, 0), 0, 63, &instance)
           && int_within(PyList_GET_ITEM(mig, 1), 1, 8, &slices)
           && int_within(PyList_GET_ITEM(mig, 2), 1, 8, &gpu_slices) && slices <= gpu_slices;
}

/* wire._check_row_shape and the number checks of _decode_gpu_rows, for one row. */
static int row_ok(PyObject *row, Py_ssize_t field_count, Py_ssize_t model_count, Py_ssize_t key_count)
{
    Py_ssize_t length;
    long long ignored;
    if (!PyList_CheckExact(row))
        return 0;
    length = PyList_GET_SIZE(row);
    if (length != 6 && length != 7)
        return 0;
    return int_within(PyList_GET_ITEM(row, 0), 0, MAX_GPUS - 1, &ignored)
           && is_uuid(PyList_GET_ITEM(row, 1))
           && int_within(PyList_GET_ITEM(row, 2), 0, model_count - 1, &ignored)
           && values_ok(PyList_GET_ITEM(row, 3), field_count)
           && holders_ok(PyList_GET_ITEM(row, 4), key_count)
           && owners_ok(PyList_GET_ITEM(row, 5), key_count)
           && (length == 6 || mig_ok(PyList_GET_ITEM(row, 6)));
}

/* ------------------------------------------------------------------------------ building */

/* A tuple, or a NamedTuple of `type`, holding `count` new references (stolen, even on failure):
 * what tuple.__new__(type, items) makes, without the items' own tuple in between. */
static PyObject *named_tuple(PyTypeObject *type, Py_ssize_t count, PyObject **items)
{
    Py_ssize_t i;
    PyObject *made = NULL;
    for (i = 0; i < count; i++)
        if (items[i] == NULL)
            goto drop;
    made = type == &PyTuple_Type ? PyTuple_New(count) : type->tp_alloc(type, count);
    if (made == NULL)
        goto drop;
    for (i = 0; i < count; i++)
        PyTuple_SET_ITEM(made, i, items[i]);
    return made;
drop:
    for (i = 0; i < count; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static PyObject *key_at(PyObject *keys, PyObject *number)
{
    PyObject *key = PyList_GET_ITEM(keys, PyLong_AsSsize_t(number)); /* checked: 0..len-1 */
    Py_INCREF(key);
    return key;
}

static PyObject *new_ref(PyObject *object)
{
    Py_INCREF(object);
    return object;
}

static PyObject *holders_of(PyObject *flat, PyObject *keys, PyTypeObject *holder_type)
{
    Py_ssize_t count = PyList_GET_SIZE(flat) / 3, i;
    PyObject *holders = PyTuple_New(count);
    if (holders == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        PyObject *items[3] = {
            key_at(keys, PyList_GET_ITEM(flat, 3 * i)),
            new_ref(PyList_GET_ITEM(flat, 3 * i + 1)),
            new_ref(PyList_GET_ITEM(flat, 3 * i + 2)),
        };
        PyObject *holder = named_tuple(holder_type, 3, items);
        if (holder == NULL) {
            Py_DECREF(holders);
            return NULL;
        }
        PyTuple_SET_ITEM(holders, i, holder);
    }
    return holders;
}

static PyObject *owners_of(PyObject *numbers, PyObject *keys)
{
    Py_ssize_t count = PyList_GET_SIZE(numbers), i;
    PyObject *owners = PyTuple_New(count);
    if (owners == NULL)
        return NULL;
    for (i = 0; i < count; i++)
        PyTuple_SET_ITEM(owners, i, key_at(keys, PyList_GET_ITEM(numbers, i)));
    return owners;
}

static PyObject *mig_of(PyObject *row)
{
    PyObject *mig;
    if (PyList_GET_SIZE(row) == 6)
        return new_ref(Py_None);
    mig = PyList_GET_ITEM(row, 6);
    return PyTuple_Pack(3, PyList_GET_ITEM(mig, 0), PyList_GET_ITEM(mig, 1), PyList_GET_ITEM(mig, 2));
}

static PyObject *gpu_window_of(PyObject *row, PyObject *models, PyObject *keys, PyTypeObject *gpu_type,
                               PyTypeObject *holder_type)
{
    PyObject *items[7] = {
        new_ref(PyList_GET_ITEM(row, 0)),
        new_ref(PyList_GET_ITEM(row, 1)),
        key_at(models, PyList_GET_ITEM(row, 2)),
        PyList_AsTuple(PyList_GET_ITEM(row, 3)),
        holders_of(PyList_GET_ITEM(row, 4), keys, holder_type),
        owners_of(PyList_GET_ITEM(row, 5), keys),
        mig_of(row),
    };
    return named_tuple(gpu_type, 7, items);
}

static int is_tuple_type(PyObject *type)
{
    return PyType_Check(type) && PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type);
}

static PyObject *gpu_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *rows, *models, *keys, *gpus;
    Py_ssize_t field_count, row_count, i;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "gpu_rows(rows, field_count, models, keys, GpuWindow, Holder)");
        return NULL;
    }
    rows = args[0], models = args[2], keys = args[3];
    field_count = PyLong_AsSsize_t(args[1]);
    if (field_count == -1 && PyErr_Occurred())
        return NULL;
    if (!PyList_CheckExact(rows) || !PyList_CheckExact(models) || !PyList_CheckExact(keys)
        || !is_tuple_type(args[4]) || !is_tuple_type(args[5])) {
        PyErr_SetString(PyExc_TypeError, "gpu_rows: rows, models and keys are lists, the types tuples");
        return NULL;
    }
    row_count = PyList_GET_SIZE(rows);
    for (i = 0; i < row_count; i++) /* all checked before anything is made: most messages pass */
        if (!row_ok(PyList_GET_ITEM(rows, i), field_count, PyList_GET_SIZE(models), PyList_GET_SIZE(keys)))
            Py_RETURN_NONE;
    gpus = PyTuple_New(row_count);
    if (gpus == NULL)
        return NULL;
    for (i = 0; i < row_count; i++) {
        PyObject *gpu = gpu_window_of(PyList_GET_ITEM(rows, i), models, keys, (PyTypeObject *)args[4],
                                      (PyTypeObject *)args[5]);
        if (gpu == NULL) {
            Py_DECREF(gpus);
            return NULL;
        }
        PyTuple_SET_ITEM(gpus, i, gpu);
    }
    return gpus;
}

/* ------------------------------------------------------------------------- workloads */

#define MAX_WORKLOADS 1024

static int identity_value_ok(PyObject *value)
{
    return value == Py_None || PyUnicode_CheckExact(value) || PyLong_CheckExact(value);
}

/* An identity wire._decode_identity takes without checking it again: a dict of str, int or None
 * values, equal to the one last found valid for its key. */
static int known_identity(PyObject *key, PyObject *identity, PyObject *valid)
{
    PyObject *name, *value, *last;
    Py_ssize_t at = 0;
    if (!PyUnicode_CheckExact(key) || !PyDict_CheckExact(identity))
        return 0;
    while (PyDict_Next(identity, &at, &name, &value))
        if (!identity_value_ok(value))
            return 0;
    last = PyDict_GetItemWithError(valid, key);
    if (last == NULL) {
        PyErr_Clear();
        return 0;
    }
    return PyObject_RichCompareBool(last, identity, Py_EQ) == 1 ? 1 : (PyErr_Clear(), 0);
}

/* known_workloads(raw, valid) -> (keys, workloads) | None: wire._decode_workload_list when every
 * identity is one already found valid (the same jobs come back every window); None otherwise. */
static PyObject *known_workloads(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *raw, *valid, *workloads;
    Py_ssize_t count, i;
    if (nargs != 2 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "known_workloads(raw, valid: dict)");
        return NULL;
    }
    raw = args[0], valid = args[1];
    if (!PyList_CheckExact(raw) || PyList_GET_SIZE(raw) > MAX_WORKLOADS)
        Py_RETURN_NONE;
    count = PyList_GET_SIZE(raw);
    workloads = PyDict_New();
    if (workloads == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(raw, i), *key, *identity;
        if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 2)
            goto decline;
        key = PyList_GET_ITEM(entry, 0), identity = PyList_GET_ITEM(entry, 1);
        if (!known_identity(key, identity, valid))
            goto decline;
        if (PyDict_SetItem(workloads, key, identity) < 0) {
            Py_DECREF(workloads);
            return NULL;
        }
    }
    if (PyDict_GET_SIZE(workloads) != count) /* a key twice: the Python path names it */
        goto decline;
    return Py_BuildValue("(NN)", PyDict_Keys(workloads), workloads);
decline:
    Py_DECREF(workloads);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------- LineFormat */

typedef struct {
    char *text; /* ASCII, not terminated */
    Py_ssize_t length;
} Piece;

typedef struct {
    PyObject_HEAD
    Py_ssize_t count;     /* known fields */
    Py_ssize_t *position; /* of each known field among a GPU's values */
    Piece *head;          /* `name=` */
    Piece *suffix;        /* `i,`, `e-3,`: what follows the integer, with the field's comma */
    char *scratch;        /* room for every field present at its longest */
    Py_ssize_t scratch_size;
} LineFormat;

static void line_format_dealloc(LineFormat *self)
{
    Py_ssize_t i;
    for (i = 0; i < self->count; i++) {
        if (self->head)
            PyMem_Free(self->head[i].text);
        if (self->suffix)
            PyMem_Free(self->suffix[i].text);
    }
    PyMem_Free(self->position);
    PyMem_Free(self->head);
    PyMem_Free(self->suffix);
    PyMem_Free(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int copy_ascii(PyObject *text, Piece *piece)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        PyErr_SetString(PyExc_ValueError, "LineFormat: heads and suffixes are ASCII str");
        return -1;
    }
    piece->length = PyUnicode_GET_LENGTH(text);
    piece->text = PyMem_Malloc(piece->length + 1);
    if (piece->text == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(piece->text, PyUnicode_1BYTE_DATA(text), piece->length);
    return 0;
}

static int line_format_init(LineFormat *self, PyObject *args, PyObject *kwargs)
{
    PyObject *heads, *suffixes, *positions;
    Py_ssize_t i;
    static char *names[] = {"heads", "suffixes", "positions", NULL};
    if (self->head != NULL) {
        PyErr_SetString(PyExc_TypeError, "LineFormat is made once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!:LineFormat", names, &PyTuple_Type, &heads, &PyTuple_Type,
                                     &suffixes, &PyTuple_Type, &positions))
        return -1;
    self->count = PyTuple_GET_SIZE(heads);
    if (PyTuple_GET_SIZE(suffixes) != self->count || PyTuple_GET_SIZE(positions) != self->count) {
        PyErr_SetString(PyExc_ValueError, "LineFormat: heads, suffixes and positions differ in length");
        return -1;
    }
    self->position = PyMem_Calloc(self->count + 1, sizeof(Py_ssize_t));
    self->head = PyMem_Calloc(self->count + 1, sizeof(Piece));
    self->suffix = PyMem_Calloc(self->count + 1, sizeof(Piece));
    if (!self->position || !self->head || !self->suffix) {
        PyErr_NoMemory();
        return -1;
    }
    self->scratch_size = 1;
    for (i = 0; i < self->count; i++) {
        self->position[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, i));
        if (self->position[i] < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "LineFormat: positions are >= 0");
            return -1;
        }
        if (copy_ascii(PyTuple_GET_ITEM(heads, i), &self->head[i]) < 0
            || copy_ascii(PyTuple_GET_ITEM(suffixes, i), &self->suffix[i]) < 0)
            return -1;
        self->scratch_size += self->head[i].length + DIGITS_MAX + self->suffix[i].length;
    }
    self->scratch = PyMem_Malloc(self->scratch_size);
    if (self->scratch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static const char DIGIT_PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* The decimal text of `number` at `out`, as str(int) writes it; returns its length. */
static Py_ssize_t write_int(char *out, long long number)
{
    char digits[DIGITS_MAX];
    char *end = digits + DIGITS_MAX, *at = end;
    unsigned long long rest = number < 0 ? 0ULL - (unsigned long long)number : (unsigned long long)number;
    Py_ssize_t length;
    while (rest >= 100) {
        unsigned pair = (unsigned)(rest % 100) * 2;
        rest /= 100;
        *--at = DIGIT_PAIRS[pair + 1];
        *--at = DIGIT_PAIRS[pair];
    }
    if (rest >= 10) {
        *--at = DIGIT_PAIRS[rest * 2 + 1];
        *--at = DIGIT_PAIRS[rest * 2];
    }
    else
        *--at = (char)('0' + rest);
    if (number < 0)
        *--at = '-';
    length = end - at;
    memcpy(out, at, length);
    return length;
}

/* The field set of one GPU's values into self->scratch; its length, or -1 to decline. */
static Py_ssize_t write_fields(LineFormat *self, PyObject *values)
{
    Py_ssize_t i, length = 0, value_count;
    if (!PyTuple_Check(values))
        return -1;
    value_count = PyTuple_GET_SIZE(values);
    for (i = 0; i < self->count; i++) {
        PyObject *value;
        long long number;
        if (self->position[i] >= value_count)
            return -1;
        value = PyTuple_GET_ITEM(values, self->position[i]);
        if (value == Py_None)
            continue;
        if (!int_within(value, -MAX_ABS_INT, MAX_ABS_INT, &number))
            return -1;
        memcpy(self->scratch + length, self->head[i].text, self->head[i].length);
        length += self->head[i].length;
        length += write_int(self->scratch + length, number);
        memcpy(self->scratch + length, self->suffix[i].text, self->suffix[i].length);
        length += self->suffix[i].length;
    }
    return length;
}

static PyObject *ascii_of(PyObject *text)
{
    return PyUnicode_Check(text) && PyUnicode_IS_ASCII(text) ? text : NULL;
}

/* head + fields + tail as a new str. */
static PyObject *joined(PyObject *head, const char *fields, Py_ssize_t fields_length, PyObject *tail)
{
    Py_ssize_t head_length = PyUnicode_GET_LENGTH(head), tail_length = PyUnicode_GET_LENGTH(tail);
    PyObject *line = PyUnicode_New(head_length + fields_length + tail_length, 127);
    char *at;
    if (line == NULL)
        return NULL;
    at = (char *)PyUnicode_1BYTE_DATA(line);
    memcpy(at, PyUnicode_1BYTE_DATA(head), head_length);
    memcpy(at + head_length, fields, fields_length);
    memcpy(at + head_length + fields_length, PyUnicode_1BYTE_DATA(tail), tail_length);
    return line;
}

/* gpu_lines(plans, gpus, tail): [plan[0] + fields(gpu[3]) + tail for each pair], or None. */
static PyObject *line_format_gpu_lines(LineFormat *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *plans, *gpus, *tail, *lines;
    Py_ssize_t count, i;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "gpu_lines(plans, gpus, tail)");
        return NULL;
    }
    plans = args[0], gpus = args[1], tail = ascii_of(args[2]);
    if (!PyList_CheckExact(plans) || !PyTuple_Check(gpus) || PyList_GET_SIZE(plans) != PyTuple_GET_SIZE(gpus)) {
        PyErr_SetString(PyExc_TypeError, "gpu_lines: plans is a list, gpus a tuple, of one length");
        return NULL;
    }
    if (tail == NULL)
        Py_RETURN_NONE;
    count = PyList_GET_SIZE(plans);
    lines = PyList_New(count);
    if (lines == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        PyObject *plan = PyList_GET_ITEM(plans, i), *gpu = PyTuple_GET_ITEM(gpus, i), *head, *line;
        Py_ssize_t fields_length;
        if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) < 1 || !PyTuple_Check(gpu) || PyTuple_GET_SIZE(gpu) < 4)
            goto decline;
        head = ascii_of(PyTuple_GET_ITEM(plan, 0));
        fields_length = write_fields(self, PyTuple_GET_ITEM(gpu, 3));
        if (head == NULL || fields_length < 0)
            goto decline;
        line = joined(head, self->scratch, fields_length, tail);
        if (line == NULL) {
            Py_DECREF(lines);
            return NULL;
        }
        PyList_SET_ITEM(lines, i, line);
    }
    return lines;
decline:
    Py_DECREF(lines);
    Py_RETURN_NONE;
}

static PyMethodDef line_format_methods[] = {
    {"gpu_lines", (PyCFunction)(void (*)(void))line_format_gpu_lines, METH_FASTCALL,
     "gpu_lines(plans, gpus, tail) -> list[str] | None: plan[0] + `name=value<suffix>,` for each present "
     "field of gpu[3] + tail, per GPU; None to leave it to the Python path."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LineFormatType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gpufleet._native.LineFormat",
    .tp_basicsize = sizeof(LineFormat),
    .tp_dealloc = (destructor)line_format_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LineFormat(heads, suffixes, positions): how the known fields of a GPU's values are written.",
    .tp_methods = line_format_methods,
    .tp_init = (initproc)line_format_init,
    .tp_new = PyType_GenericNew,
};

/* -------------------------------------------------------------------------- tenant lines */

/* What one GPU-window of one tenant needs, read from its plan and GpuWindow. */
typedef struct {
    PyObject *texts[4]; /* tenant line pieces: tags, tenant tag, uuid field, workloads field */
    long long energy_mj, busy_ms, memory;
    int has_energy, has_busy, has_memory;
} OneTenant;

/* Memory of a one-tenant GPU, as TelemetryLines.tenant_lines finds it: the one holder's reading,
 * else (sharing.holder_slots set) the readings present summed; 0 to decline. */
static int memory_of(PyObject *sharing, PyObject *holders, OneTenant *out)
{
    Py_ssize_t count = PyTuple_GET_SIZE(holders), i;
    long long total = 0, memory;
    int present = 0;
    if (count != 1 && PyTuple_GET_ITEM(sharing, 1) == Py_None) { /* idle owners or nobody */
        out->has_memory = 0;
        return 1;
    }
    for (i = 0; i < count; i++) {
        PyObject *holder = PyTuple_GET_ITEM(holders, i), *reading;
        if (!PyTuple_Check(holder) || PyTuple_GET_SIZE(holder) != 3)
            return 0;
        reading = PyTuple_GET_ITEM(holder, 2);
        if (reading == Py_None)
            continue;
        if (!int_within(reading, 0, MAX_HOLDER_MEMORY, &memory))
            return 0;
        total += memory, present = 1;
    }
    out->has_memory = present, out->memory = total;
    return 1;
}

/* A reading at `at` of the values, None (or no such field: at < 0) as absent; 0 to decline. */
static int reading_at(PyObject *values, Py_ssize_t at, long long lo, long long *out, int *has)
{
    PyObject *value;
    *has = 0;
    if (at < 0)
        return 1;
    if (at >= PyTuple_GET_SIZE(values))
        return 0;
    value = PyTuple_GET_ITEM(values, at);
    if (value == Py_None)
        return 1;
    *has = 1;
    return int_within(value, lo, MAX_ABS_INT, out);
}

/* What a GPU-window's tenant lines read from its values: energy, and busy time from utilisation. */
typedef struct {
    long long energy_mj, busy_ms;
    int has_energy, has_busy;
} Readings;

/* 0 to decline: a reading C does not take (a negative energy, which the Python path rejects). */
static int readings_of(PyObject *values, Py_ssize_t energy_at, Py_ssize_t util_at, long long window_ms, Readings *out)
{
    long long util;
    if (!reading_at(values, energy_at, 0, &out->energy_mj, &out->has_energy)
        || !reading_at(values, util_at, -MAX_ABS_INT, &util, &out->has_busy))
        return 0;
    if (out->has_busy) { /* telemetry._busy_ms: window x util, half up, util clamped to 0..100 % */
        util = util < 0 ? 0 : util > 10000 ? 10000 : util;
        out->busy_ms = (2 * window_ms * util + 10000) / 20000;
    }
    return 1;
}

/* The GPU-window of a plan with one tenant line (plan_and_gpu_ok), or 0: a text not ASCII. */
static int one_tenant(PyObject *plan, PyObject *gpu, const Readings *readings, OneTenant *out)
{
    PyObject *texts = PyTuple_GET_ITEM(PyTuple_GET_ITEM(plan, 2), 0);
    int i;
    if (!PyTuple_Check(texts) || PyTuple_GET_SIZE(texts) != 4)
        return 0;
    for (i = 0; i < 4; i++)
        if ((out->texts[i] = ascii_of(PyTuple_GET_ITEM(texts, i))) == NULL)
            return 0;
    if (!memory_of(PyTuple_GET_ITEM(plan, 1), PyTuple_GET_ITEM(gpu, 4), out))
        return 0;
    out->energy_mj = readings->energy_mj, out->has_energy = readings->has_energy;
    out->busy_ms = readings->busy_ms, out->has_busy = readings->has_busy;
    return 1;
}

static char *put_text(char *at, PyObject *text)
{
    memcpy(at, PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text));
    return at + PyUnicode_GET_LENGTH(text);
}

static char *put_field(char *at, const char *name, long long number, const char *suffix)
{
    size_t name_length = strlen(name), suffix_length = strlen(suffix);
    memcpy(at, name, name_length);
    at += name_length;
    at += write_int(at, number);
    memcpy(at, suffix, suffix_length);
    return at + suffix_length;
}

/* telemetry._tenant_line: one tenant's share of a GPU-window. */
static PyObject *tenant_line(const OneTenant *one, long long gpu_ms, PyObject *stamp)
{
    char small[2048], *buffer = small, *at;
    Py_ssize_t room = 6 * DIGITS_MAX + 96 + PyUnicode_GET_LENGTH(stamp), i;
    PyObject *line;
    for (i = 0; i < 4; i++)
        room += PyUnicode_GET_LENGTH(one->texts[i]);
    if (room > (Py_ssize_t)sizeof(small) && (buffer = PyMem_Malloc(room)) == NULL)
        return PyErr_NoMemory();
    at = put_text(buffer, one->texts[0]);
    at = put_text(at, one->texts[1]);
    at = put_field(at, "gpu_s=", gpu_ms, "e-3");
    if (one->has_busy) {
        at = put_field(at, ",busy_gpu_s=", one->busy_ms, "e-3");
        at = put_field(at, ",idle_gpu_s=", gpu_ms - one->busy_ms, "e-3");
    }
    if (one->has_energy)
        at = put_field(at, ",energy_j=", one->energy_mj, "e-3");
    if (one->has_memory)
        at = put_field(at, ",peak_mem_bytes=", one->memory, "i");
    *at++ = ',';
    at = put_text(at, one->texts[2]);
    at = put_text(at, one->texts[3]);
    at = put_text(at, stamp);
    line = PyUnicode_New(at - buffer, 127);
    if (line != NULL)
        memcpy(PyUnicode_1BYTE_DATA(line), buffer, at - buffer);
    if (buffer != small)
        PyMem_Free(buffer);
    return line;
}

/* ------------------------------------------------------------------- several tenants */

#define MAX_KEYS 64 /* workloads sharing one GPU-window; past this the Python path splits it */

/* attribute.hamilton: `total` in proportion to `weights` (largest remainder, ties to the lower
 * position), no key above its cap when `caps` is given; 0 where the caps leave a unit nowhere to
 * go (the Python path then raises). Products in 128 bits: energy (up to 2^63 mJ) x weight. */
static int hamilton(long long total, const long long *weights, int count, const long long *caps, long long *seats)
{
    __int128 whole = 0, remainders[MAX_KEYS];
    long long ones[MAX_KEYS], left = total;
    int order[MAX_KEYS], i, j;
    for (i = 0; i < count; i++)
        whole += weights[i];
    if (whole == 0) { /* all-zero weights split equally */
        for (i = 0; i < count; i++)
            ones[i] = 1;
        weights = ones, whole = count;
    }
    for (i = 0; i < count; i++) {
        __int128 product = (__int128)total * weights[i];
        seats[i] = (long long)(product / whole);
        remainders[i] = product % whole;
        if (caps != NULL && seats[i] > caps[i])
            seats[i] = caps[i];
        left -= seats[i];
    }
    if (left <= 0)
        return left == 0;
    for (i = 0; i < count; i++) { /* by remainder, largest first; a stable insertion sort keeps ties in order */
        for (j = i; j > 0 && remainders[order[j - 1]] < remainders[i]; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    while (left > 0) { /* a capped key passes its unit to the next in line (attribute._hand_out) */
        long long given = 0;
        for (i = 0; i < count && left > 0; i++)
            if (caps == NULL || seats[order[i]] < caps[order[i]])
                seats[order[i]]++, left--, given++;
        if (given == 0)
            return 0;
    }
    return 1;
}

/* Each key's weight and memory, as telemetry._weights finds them; 0 to decline. */
static int weights_of(PyObject *sharing, PyObject *holders, int count, long long *weights, long long *memory,
                      int *has_memory)
{
    PyObject *slots = PyTuple_GET_ITEM(sharing, 1);
    long long sm[MAX_KEYS] = {0}, sm_total = 0, reading;
    Py_ssize_t i;
    for (i = 0; i < count; i++)
        memory[i] = 0, has_memory[i] = 0;
    if (slots == Py_None) { /* idle owners, or nobody: equal shares, no memory reading */
        for (i = 0; i < count; i++)
            weights[i] = 1;
        return 1;
    }
    if (!PyTuple_Check(slots) || PyTuple_GET_SIZE(slots) != PyTuple_GET_SIZE(holders))
        return 0;
    for (i = 0; i < PyTuple_GET_SIZE(holders); i++) {
        PyObject *holder = PyTuple_GET_ITEM(holders, i), *sm_util, *mem;
        long long slot;
        if (!int_within(PyTuple_GET_ITEM(slots, i), 0, count - 1, &slot) || !PyTuple_Check(holder)
            || PyTuple_GET_SIZE(holder) != 3)
            return 0;
        sm_util = PyTuple_GET_ITEM(holder, 1), mem = PyTuple_GET_ITEM(holder, 2);
        if (sm_util != Py_None) {
            if (!int_within(sm_util, 0, MAX_HOLDER_SM, &reading))
                return 0;
            sm[slot] += reading, sm_total += reading;
        }
        if (mem != Py_None) {
            if (!int_within(mem, 0, MAX_HOLDER_MEMORY, &reading))
                return 0;
            memory[slot] += reading, has_memory[slot] = 1;
        }
    }
    for (i = 0; i < count; i++)
        weights[i] = sm_total > 0 ? sm[i] : memory[i];
    return 1;
}

/* One tenant's sums over its keys at `slots` (attribute.by_tenant), into `one`; 0 to decline. */
static int tenant_total(PyObject *slots, int count, const long long *gpu_ms, const long long *busy_ms,
                        const long long *energy, const long long *memory, const int *has_memory, OneTenant *one,
                        long long *tenant_gpu_ms)
{
    Py_ssize_t i;
    long long slot;
    if (!PyTuple_Check(slots) || PyTuple_GET_SIZE(slots) < 1)
        return 0;
    *tenant_gpu_ms = 0, one->busy_ms = 0, one->energy_mj = 0, one->memory = 0, one->has_memory = 0;
    for (i = 0; i < PyTuple_GET_SIZE(slots); i++) {
        if (!int_within(PyTuple_GET_ITEM(slots, i), 0, count - 1, &slot))
            return 0;
        *tenant_gpu_ms += gpu_ms[slot], one->busy_ms += busy_ms[slot], one->energy_mj += energy[slot];
        if (has_memory[slot])
            one->memory += memory[slot], one->has_memory = 1;
    }
    return 1;
}

static PyObject *tenant_line(const OneTenant *one, long long gpu_ms, PyObject *stamp);

/* The lines of a GPU-window split among several tenants, appended to `lines`: 1, or 0 to
 * decline (nothing appended), -1 on error. */
static int several_tenants(PyObject *plan, PyObject *gpu, const Readings *readings, long long window_ms, PyObject *stamp,
                           PyObject *lines)
{
    PyObject *sharing = PyTuple_GET_ITEM(plan, 1), *texts = PyTuple_GET_ITEM(plan, 2), *keys, *tenants;
    long long weights[MAX_KEYS], memory[MAX_KEYS], gpu_ms[MAX_KEYS], busy_ms[MAX_KEYS], energy[MAX_KEYS];
    long long busy = readings->has_busy ? readings->busy_ms : 0, tenant_gpu_ms[MAX_KEYS];
    int has_memory[MAX_KEYS], count, i, k;
    OneTenant ones[MAX_KEYS];
    keys = PyTuple_GET_ITEM(sharing, 0), tenants = PyTuple_GET_ITEM(sharing, 3);
    if (!PyTuple_Check(keys) || !PyTuple_Check(tenants) || PyTuple_GET_SIZE(keys) > MAX_KEYS
        || PyTuple_GET_SIZE(tenants) != PyTuple_GET_SIZE(texts))
        return 0;
    count = (int)PyTuple_GET_SIZE(keys);
    if (!weights_of(sharing, PyTuple_GET_ITEM(gpu, 4), count, weights, memory, has_memory)
        || !hamilton(window_ms, weights, count, NULL, gpu_ms))
        return 0;
    for (k = 0; k < count; k++)
        busy_ms[k] = busy == window_ms ? gpu_ms[k] : 0, energy[k] = 0;
    if (readings->has_busy && busy > 0 && busy < window_ms && !hamilton(busy, weights, count, gpu_ms, busy_ms))
        return 0;
    if (readings->has_energy && !hamilton(readings->energy_mj, weights, count, NULL, energy))
        return 0;
    if (PyTuple_GET_SIZE(tenants) > MAX_KEYS)
        return 0;
    for (i = 0; i < PyTuple_GET_SIZE(tenants); i++) { /* all checked and summed before any line is made */
        PyObject *piece = PyTuple_GET_ITEM(texts, i);
        if (!PyTuple_Check(piece) || PyTuple_GET_SIZE(piece) != 4
            || !tenant_total(PyTuple_GET_ITEM(tenants, i), count, gpu_ms, busy_ms, energy, memory, has_memory, &ones[i],
                             &tenant_gpu_ms[i]))
            return 0;
        for (k = 0; k < 4; k++)
            if ((ones[i].texts[k] = ascii_of(PyTuple_GET_ITEM(piece, k))) == NULL)
                return 0;
        ones[i].has_busy = readings->has_busy, ones[i].has_energy = readings->has_energy;
    }
    for (i = 0; i < PyTuple_GET_SIZE(tenants); i++) {
        PyObject *line = tenant_line(&ones[i], tenant_gpu_ms[i], stamp);
        if (line == NULL || PyList_Append(lines, line) < 0) {
            Py_XDECREF(line);
            return -1;
        }
        Py_DECREF(line);
    }
    return 1;
}

static int extend_with(PyObject *lines, PyObject *more)
{
    int failed;
    if (more == NULL)
        return -1;
    failed = PyList_SetSlice(lines, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, more);
    Py_DECREF(more);
    return failed;
}

/* A GpuPlan (its Sharing of five fields, its tenant lines) and a GpuWindow without MIG, of the
 * shapes the tenant lines read. */
static int plan_and_gpu_ok(PyObject *plan, PyObject *gpu)
{
    return PyTuple_Check(plan) && PyTuple_GET_SIZE(plan) == 3 && PyTuple_Check(PyTuple_GET_ITEM(plan, 1))
           && PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, 1)) == 5 && PyTuple_Check(PyTuple_GET_ITEM(plan, 2))
           && PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, 2)) >= 1 && PyTuple_Check(gpu) && PyTuple_GET_SIZE(gpu) == 7
           && PyTuple_Check(PyTuple_GET_ITEM(gpu, 3)) && PyTuple_Check(PyTuple_GET_ITEM(gpu, 4))
           && PyTuple_GET_ITEM(gpu, 6) == Py_None;
}

/* tenant_lines(plans, gpus, window_ms, energy_at, util_at, stamp, split): the `tenant_usage`
 * lines of a window's GPUs in order; a GPU with one tenant here, any other through split(plan, gpu). */
static PyObject *tenant_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *plans, *gpus, *stamp, *split, *lines;
    Py_ssize_t energy_at, util_at, count, i;
    long long window_ms;
    int stamp_ok;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "tenant_lines(plans, gpus, window_ms, energy_at, util_at, stamp, split)");
        return NULL;
    }
    plans = args[0], gpus = args[1], stamp = args[5], split = args[6];
    window_ms = PyLong_AsLongLong(args[2]);
    energy_at = PyLong_AsSsize_t(args[3]);
    util_at = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyList_CheckExact(plans) || !PyTuple_Check(gpus) || PyList_GET_SIZE(plans) != PyTuple_GET_SIZE(gpus)
        || !PyCallable_Check(split) || window_ms <= 0 || window_ms > MAX_ABS_INT / 20000) {
        PyErr_SetString(PyExc_TypeError, "tenant_lines: plans a list, gpus a tuple of one length, window_ms > 0, split callable");
        return NULL;
    }
    count = PyList_GET_SIZE(plans);
    stamp_ok = ascii_of(stamp) != NULL;
    lines = PyList_New(0);
    if (lines == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        PyObject *plan = PyList_GET_ITEM(plans, i), *gpu = PyTuple_GET_ITEM(gpus, i), *line;
        Readings readings;
        int done = 0;
        if (stamp_ok && plan_and_gpu_ok(plan, gpu)
            && readings_of(PyTuple_GET_ITEM(gpu, 3), energy_at, util_at, window_ms, &readings)) {
            OneTenant one;
            if (PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, 2)) != 1)
                done = several_tenants(plan, gpu, &readings, window_ms, stamp, lines);
            else if (one_tenant(plan, gpu, &readings, &one)) {
                line = tenant_line(&one, window_ms, stamp);
                done = line != NULL && PyList_Append(lines, line) == 0 ? 1 : -1;
                Py_XDECREF(line);
            }
        }
        if (done == 0)
            done = extend_with(lines, PyObject_CallFunctionObjArgs(split, plan, gpu, NULL)) < 0 ? -1 : 1;
        if (done < 0) {
            Py_DECREF(lines);
            return NULL;
        }
    }
    return lines;
}

/* ---------------------------------------------------------------------------- plans */

/* numbers[key] for each key of `keys` (workload keys), as a tuple; KeyError as in Python. */
static PyObject *numbers_of(PyObject *keys, Py_ssize_t count, int holders, PyObject *numbers)
{
    PyObject *made = PyTuple_New(count);
    Py_ssize_t i;
    if (made == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i), *number;
        if (holders) { /* a Holder: its workload */
            if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) < 1) {
                PyErr_SetString(PyExc_TypeError, "find_plans: a holder is a tuple");
                Py_DECREF(made);
                return NULL;
            }
            key = PyTuple_GET_ITEM(key, 0);
        }
        number = PyDict_GetItemWithError(numbers, key);
        if (number == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
            Py_DECREF(made);
            return NULL;
        }
        PyTuple_SET_ITEM(made, i, new_ref(number));
    }
    return made;
}

/* TelemetryLines.plans' key of a GPU: (index, uuid, model, holders' numbers, idle owners' numbers). */
static PyObject *plan_key(PyObject *gpu, PyObject *numbers)
{
    PyObject *holders, *owners, *items[5];
    if (!PyTuple_Check(gpu) || PyTuple_GET_SIZE(gpu) != 7 || !PyTuple_Check(PyTuple_GET_ITEM(gpu, 4))
        || !PyTuple_Check(PyTuple_GET_ITEM(gpu, 5))) {
        PyErr_SetString(PyExc_TypeError, "find_plans: gpus are GpuWindows");
        return NULL;
    }
    holders = PyTuple_GET_ITEM(gpu, 4), owners = PyTuple_GET_ITEM(gpu, 5);
    items[0] = new_ref(PyTuple_GET_ITEM(gpu, 0));
    items[1] = new_ref(PyTuple_GET_ITEM(gpu, 1));
    items[2] = new_ref(PyTuple_GET_ITEM(gpu, 2));
    items[3] = numbers_of(holders, PyTuple_GET_SIZE(holders), 1, numbers);
    /* the owners share the window only when nothing ran */
    items[4] = PyTuple_GET_SIZE(holders) ? PyTuple_New(0) : numbers_of(owners, PyTuple_GET_SIZE(owners), 0, numbers);
    return named_tuple(&PyTuple_Type, 5, items);
}

/* find_plans(gpus, numbers, plans) -> (found, missing): the plan kept under each GPU's key or
 * None, and (position, key) of each GPU that has none. */
static PyObject *find_plans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *gpus, *numbers, *plans, *found, *missing;
    Py_ssize_t count, i;
    if (nargs != 3 || !PyTuple_Check(args[0]) || !PyDict_CheckExact(args[1]) || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "find_plans(gpus: tuple, numbers: dict, plans: dict)");
        return NULL;
    }
    gpus = args[0], numbers = args[1], plans = args[2];
    count = PyTuple_GET_SIZE(gpus);
    found = PyList_New(count);
    missing = PyList_New(0);
    if (found == NULL || missing == NULL)
        goto fail;
    for (i = 0; i < count; i++) {
        PyObject *key = plan_key(PyTuple_GET_ITEM(gpus, i), numbers), *plan;
        if (key == NULL)
            goto fail;
        plan = PyDict_GetItemWithError(plans, key);
        if (plan == NULL) {
            PyObject *entry;
            if (PyErr_Occurred()) {
                Py_DECREF(key);
                goto fail;
            }
            entry = Py_BuildValue("(nN)", i, key); /* steals key */
            if (entry == NULL || PyList_Append(missing, entry) < 0) {
                Py_XDECREF(entry);
                goto fail;
            }
            Py_DECREF(entry);
            plan = Py_None;
        }
        else
            Py_DECREF(key);
        PyList_SET_ITEM(found, i, new_ref(plan));
    }
    return Py_BuildValue("(NN)", found, missing);
fail:
    Py_XDECREF(found);
    Py_XDECREF(missing);
    return NULL;
}

/* ------------------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
    {"gpu_rows", (PyCFunction)(void (*)(void))gpu_rows, METH_FASTCALL,
     "gpu_rows(rows, field_count, models, keys, GpuWindow, Holder) -> tuple[GpuWindow, ...] | None: "
     "wire._decode_gpu_rows when every row passes; None to leave it to the Python path."},
    {"known_workloads", (PyCFunction)(void (*)(void))known_workloads, METH_FASTCALL,
     "known_workloads(raw, valid) -> (keys, workloads) | None: wire._decode_workload_list when every "
     "identity equals the one last found valid for its key; None to leave it to the Python path."},
    {"find_plans", (PyCFunction)(void (*)(void))find_plans, METH_FASTCALL,
     "find_plans(gpus, numbers, plans) -> (found, missing): TelemetryLines.plans' lookup of each GPU's plan "
     "by (index, uuid, model, holders' numbers, idle owners' numbers); None and (position, key) where none is kept."},
    {"tenant_lines", (PyCFunction)(void (*)(void))tenant_lines, METH_FASTCALL,
     "tenant_lines(plans, gpus, window_ms, energy_at, util_at, stamp, split) -> list[str]: the tenant_usage "
     "lines of GPUs without MIG, in order; one-tenant GPUs here, the others by split(plan, gpu)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gpufleet._native",
    .m_doc = "The collector's hot loops in C: fast paths of wire._decode_gpu_rows and telemetry.FieldFormat.",
    .m_size = -1,
    .m_methods = module_methods,
};

static int add_int64(PyObject *module, const char *name, long long value)
{
    PyObject *number = PyLong_FromLongLong(value);
    int failed = PyModule_AddObjectRef(module, name, number);
    Py_XDECREF(number);
    return failed;
}

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *module;
    if (PyType_Ready(&LineFormatType) < 0)
        return NULL;
    module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "LineFormat", (PyObject *)&LineFormatType) < 0
        || PyModule_AddIntConstant(module, "MAX_GPUS", MAX_GPUS) < 0
        || PyModule_AddIntConstant(module, "MAX_HOLDERS", MAX_HOLDERS) < 0
        || PyModule_AddIntConstant(module, "MAX_WORKLOADS", MAX_WORKLOADS) < 0
        || PyModule_AddIntConstant(module, "MAX_HOLDER_SM", MAX_HOLDER_SM) < 0
        || add_int64(module, "MAX_HOLDER_MEMORY", MAX_HOLDER_MEMORY) < 0
        || add_int64(module, "MAX_ABS_INT", MAX_ABS_INT) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
