# Sourced by the launch scripts: creates .venv if missing and installs recjax into it.
# ensure_venv [EXTRAS] installs ".[EXTRAS]" (one extra or a comma list, e.g.
# test,tpu_aot); it reinstalls only when setup.py changed.
VENV="${RECJAX_VENV:-$PWD/.venv}"
ensure_venv() {
  local extra="${1:-}" spec="." stamp
  [ -n "$extra" ] && spec=".[$extra]"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[recjax] creating $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  fi
  stamp="$VENV/.recjax-installed-$(printf %s "${extra:-base}" | tr , +)"
  if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    echo "[recjax] installing $spec into $VENV (first run takes about a minute)" >&2
    if ! "$VENV/bin/python" -m pip install -q -c launch/constraints.txt -e "$spec" \
        > "$VENV/install.log" 2>&1; then
      cat "$VENV/install.log" >&2
      echo "[recjax] pip install failed (log: $VENV/install.log)" >&2
      return 1
    fi
    case ",$extra," in *,beam,*)  # see launch/constraints.txt: beam vs protobuf 7
      if ! "$VENV/bin/python" -m pip install -q "protobuf==7.36.2" \
          >> "$VENV/install.log" 2>&1; then
        echo "[recjax] pip install protobuf failed (log: $VENV/install.log)" >&2
        return 1
      fi ;;
    esac
    touch "$stamp"
  fi
}
