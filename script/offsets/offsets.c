/* Prints the CPython struct offsets loopguard's readers use, as the Rust table entry of
 * src/reader/layout.rs, for the interpreter whose headers it is compiled against.
 * Built and run by script/offsets/print (see there); release (non-debug, GIL) builds only. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>

#if PY_VERSION_HEX < 0x030A0000
#error "loopguard supports CPython 3.10 and later"
#endif
#ifdef Py_GIL_DISABLED
#error "free-threaded builds have other layouts"
#endif
#ifdef Py_DEBUG
#error "debug builds have other layouts"
#endif

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>
#endif
#include "internal/pycore_code.h"
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#endif
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#include "internal/pycore_gil.h"
#endif

#define OFF(type, field) ((unsigned long)offsetof(type, field))
#define SOME(v) printf("Some(%lu)", (unsigned long)(v))
#define FIELD(name, v) printf("        %s: %lu,\n", name, (unsigned long)(v))

int main(void) {
    int minor = PY_MINOR_VERSION;
    printf("    // %s: printed by script/offsets/print from its headers.\n", PY_VERSION);
    printf("    Layout {\n");
    printf("        version: (3, %d),\n", minor);
    FIELD("ob_type", OFF(PyObject, ob_type));
    FIELD("ob_size", OFF(PyVarObject, ob_size));
    /* Thread states. */
    FIELD("ts_next", OFF(PyThreadState, next));
    FIELD("ts_interp", OFF(PyThreadState, interp));
    FIELD("ts_thread_id", OFF(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030B0000
    printf("        ts_native_thread_id: "); SOME(OFF(PyThreadState, native_thread_id)); printf(",\n");
#else
    printf("        ts_native_thread_id: None,\n");
#endif
#if PY_VERSION_HEX >= 0x030F0000
    printf("        ts_holds_gil: "); SOME(OFF(PyThreadState, holds_gil)); printf(",\n");
#else
    printf("        ts_holds_gil: None,\n");
#endif
    /* Frames. */
#if PY_VERSION_HEX < 0x030B0000
    FIELD("ts_frame", OFF(PyThreadState, frame));
    printf("        cframe_current: None,\n");
    printf("        entry_link: None,\n");
    printf("        frame_kind: FrameKind::Object,\n");
    FIELD("f_back", OFF(PyFrameObject, f_back));
    FIELD("f_code", OFF(PyFrameObject, f_code));
    FIELD("f_instr", OFF(PyFrameObject, f_lasti));
    printf("        f_owner: None,\n");
    printf("        f_gen: "); SOME(OFF(PyFrameObject, f_gen)); printf(",\n");
    printf("        co_flags: "); SOME(OFF(PyCodeObject, co_flags)); printf(",\n");
#else
#if PY_VERSION_HEX < 0x030D0000
    FIELD("ts_frame", OFF(PyThreadState, cframe));
    printf("        cframe_current: "); SOME(OFF(_PyCFrame, current_frame)); printf(",\n");
#if PY_VERSION_HEX < 0x030C0000
    printf("        entry_link: Some(EntryLink {\n");
    printf("            f_is_entry: %zu,\n", OFF(_PyInterpreterFrame, is_entry));
    printf("            cframe_previous: %zu,\n", OFF(_PyCFrame, previous));
    printf("        }),\n");
#else
    printf("        entry_link: None,\n");
#endif
#else
    FIELD("ts_frame", OFF(PyThreadState, current_frame));
    printf("        cframe_current: None,\n");
    printf("        entry_link: None,\n");
#endif
    printf("        frame_kind: FrameKind::Interpreter,\n");
    FIELD("f_back", OFF(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX < 0x030D0000
    FIELD("f_code", OFF(_PyInterpreterFrame, f_code));
    FIELD("f_instr", OFF(_PyInterpreterFrame, prev_instr));
#else
    FIELD("f_code", OFF(_PyInterpreterFrame, f_executable));
    FIELD("f_instr", OFF(_PyInterpreterFrame, instr_ptr));
#endif
    printf("        f_owner: "); SOME(OFF(_PyInterpreterFrame, owner)); printf(",\n");
    printf("        f_gen: None,\n");
    printf("        co_flags: None,\n");
#endif
    /* Code objects. */
    FIELD("co_firstlineno", OFF(PyCodeObject, co_firstlineno));
    FIELD("co_filename", OFF(PyCodeObject, co_filename));
    FIELD("co_name", OFF(PyCodeObject, co_name));
#if PY_VERSION_HEX < 0x030B0000
    printf("        co_qualname: None,\n");
    FIELD("co_linetable", OFF(PyCodeObject, co_linetable));
    printf("        co_code: "); SOME(OFF(PyCodeObject, co_code)); printf(",\n");
    printf("        co_code_adaptive: None,\n");
    printf("        co_firsttraceable: None,\n");
    printf("        co_version: None,\n");
#else
    printf("        co_qualname: "); SOME(OFF(PyCodeObject, co_qualname)); printf(",\n");
    FIELD("co_linetable", OFF(PyCodeObject, co_linetable));
    printf("        co_code: None,\n");
    printf("        co_code_adaptive: "); SOME(OFF(PyCodeObject, co_code_adaptive)); printf(",\n");
    printf("        co_firsttraceable: "); SOME(OFF(PyCodeObject, _co_firsttraceable)); printf(",\n");
#if PY_VERSION_HEX < 0x030C0000
    printf("        co_version: None,\n");
#else
    printf("        co_version: "); SOME(OFF(PyCodeObject, co_version)); printf(",\n");
#endif
#endif
    /* Strings and bytes. */
    FIELD("bytes_sval", OFF(PyBytesObject, ob_sval));
    FIELD("str_length", OFF(PyASCIIObject, length));
    FIELD("str_state", OFF(PyASCIIObject, state));
    FIELD("str_ascii_size", sizeof(PyASCIIObject));
    FIELD("str_compact_size", sizeof(PyCompactUnicodeObject));
    /* The main interpreter and its GIL. */
    FIELD("runtime_main_interp", OFF(_PyRuntimeState, interpreters.main));
#if PY_VERSION_HEX < 0x030B0000
    FIELD("interp_threads_head", OFF(PyInterpreterState, tstate_head));
#else
    FIELD("interp_threads_head", OFF(PyInterpreterState, threads.head));
#endif
#if PY_VERSION_HEX < 0x030C0000
    printf("        gil: GilLocation::Runtime(%lu),\n", OFF(_PyRuntimeState, ceval.gil));
#else
    printf("        gil: GilLocation::Interpreter { pointer: %lu, inline: %lu },\n",
           OFF(PyInterpreterState, ceval.gil), OFF(PyInterpreterState, _gil));
#endif
    FIELD("gil_last_holder", OFF(struct _gil_runtime_state, last_holder));
    FIELD("gil_locked", OFF(struct _gil_runtime_state, locked));
    FIELD("gil_switch_number", OFF(struct _gil_runtime_state, switch_number));
    /* Where _Py_DebugOffsets (3.13+) publishes them: word indices (all fields are 8 bytes). */
#if PY_VERSION_HEX >= 0x030D0000
#define W(field) (unsigned long)(offsetof(_Py_DebugOffsets, field) / 8)
    printf("        debug: Some(DebugWords {\n");
    printf("            version: %lu,\n", W(version));
    printf("            free_threaded: %lu,\n", W(free_threaded));
    printf("            interpreters_head: %lu,\n", W(runtime_state.interpreters_head));
    printf("            threads_head: %lu,\n", W(interpreter_state.threads_head));
    printf("            ceval_gil: %lu,\n", W(interpreter_state.ceval_gil));
    printf("            gil_runtime_state: %lu,\n", W(interpreter_state.gil_runtime_state));
    printf("            gil_locked: %lu,\n", W(interpreter_state.gil_runtime_state_locked));
    printf("            gil_holder: %lu,\n", W(interpreter_state.gil_runtime_state_holder));
    printf("            ts_next: %lu,\n", W(thread_state.next));
    printf("            ts_interp: %lu,\n", W(thread_state.interp));
    printf("            ts_current_frame: %lu,\n", W(thread_state.current_frame));
    printf("            ts_thread_id: %lu,\n", W(thread_state.thread_id));
    printf("            ts_native_thread_id: %lu,\n", W(thread_state.native_thread_id));
#if PY_VERSION_HEX >= 0x030F0000
    printf("            ts_holds_gil: Some(%lu),\n", W(thread_state.holds_gil));
#else
    printf("            ts_holds_gil: None,\n");
#endif
    printf("            f_previous: %lu,\n", W(interpreter_frame.previous));
    printf("            f_executable: %lu,\n", W(interpreter_frame.executable));
    printf("            f_instr_ptr: %lu,\n", W(interpreter_frame.instr_ptr));
    printf("            f_owner: %lu,\n", W(interpreter_frame.owner));
    printf("            co_filename: %lu,\n", W(code_object.filename));
    printf("            co_name: %lu,\n", W(code_object.name));
    printf("            co_qualname: %lu,\n", W(code_object.qualname));
    printf("            co_linetable: %lu,\n", W(code_object.linetable));
    printf("            co_firstlineno: %lu,\n", W(code_object.firstlineno));
    printf("            co_code_adaptive: %lu,\n", W(code_object.co_code_adaptive));
    printf("            ob_type: %lu,\n", W(pyobject.ob_type));
    printf("            bytes_ob_size: %lu,\n", W(bytes_object.ob_size));
    printf("            bytes_ob_sval: %lu,\n", W(bytes_object.ob_sval));
    printf("            str_state: %lu,\n", W(unicode_object.state));
    printf("            str_length: %lu,\n", W(unicode_object.length));
    printf("            str_ascii_size: %lu,\n", W(unicode_object.asciiobject_size));
    printf("        }),\n");
#else
    printf("        debug: None,\n");
#endif
    printf("    }\n");
    return 0;
}
