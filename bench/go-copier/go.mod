// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors
module nbdcpy-go-copier

go 1.19

require nbdcpy v0.0.0

replace nbdcpy => ../../bindings/go
