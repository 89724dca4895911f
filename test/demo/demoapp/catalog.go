package demoapp

import (
	"math/rand/v2"

	"github.com/sluice-mesh/sluice/test/demo/api/books"
)

// Author is an author of the catalog: what the authors service answers to
// GET /authors/<id>.
type Author struct {
	// ID identifies the author, e.g. "1".
	ID string `json:"id"`
	// Name is the author's name.
	Name string `json:"name"`
	// Born is the author's year of birth.
	Born int `json:"born"`
}

// catalogAuthors returns the authors service's authors, by id.
func catalogAuthors() map[string]Author {
	return map[string]Author{
		"1": {ID: "1", Name: "Ursula K. Le Guin", Born: 1929},
		"2": {ID: "2", Name: "Octavia E. Butler", Born: 1947},
	}
}

// catalogBooks returns the books service's catalog, in order. Its four
// books have two authors, so web calls authors twice per GET /api/books.
func catalogBooks() []*books.Book {
	return []*books.Book{
		{Id: "1", Title: "A Wizard of Earthsea", AuthorId: "1", Year: 1968},
		{Id: "2", Title: "The Left Hand of Darkness", AuthorId: "1", Year: 1969},
		{Id: "3", Title: "Kindred", AuthorId: "2", Year: 1979},
		{Id: "4", Title: "Parable of the Sower", AuthorId: "2", Year: 1993},
	}
}

// injectFailure reports, at random, whether to fail a request that a
// server configured with failure rate rate (in [0, 1]) answers: true for
// about that fraction of calls, never for 0, always for 1.
func injectFailure(rate float64) bool {
	return rate > 0 && rand.Float64() < rate
}
